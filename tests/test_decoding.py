"""The packed decode path (``PackedARDecoder``): same logits as the stock forward for every model option, the same
ids through ``generate_ids``, the fall-backs, and its building blocks (RoPE as matrices, packed linears)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from prologue_hf import PrologueARForCausalLM
from prologue_hf.pipelines.decoding import (
    PackedARDecoder,
    PackedLinear,
    packed_decoder_unsupported,
    rotation_matrices,
)
from prologue_hf.pipelines.sampling import GuidanceSchedule, SamplingParams, generate_ids
from prologue_hf.testing import tiny_ar

VARIANTS = {
    "llama": {},
    "qk_norm_axes_rope": dict(use_qk_norm=True, rope_axes_dim=(8, 4, 4)),  # the official AR's options
    "gqa_biases": dict(num_key_value_heads=2, attention_bias=True, mlp_bias=True),
}


def _ar(variant: str = "llama", seed: int = 0) -> PrologueARForCausalLM:
    ar = tiny_ar(seed=seed, **VARIANTS[variant])
    with torch.no_grad():  # non-zero biases and norm weights, so folding or dropping one would show
        for name, param in ar.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.3 * torch.randn_like(param))
    return ar


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_rotation_matrices_reproduce_llama_rope():
    length, dim = 7, 16
    inv_freq = 1.0 / 10000 ** (torch.arange(0, dim, 2) / dim)
    angles = torch.outer(torch.arange(length).float(), inv_freq)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    q, k = torch.randn(2, 3, length, dim), torch.randn(2, 1, length, dim)
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos[None], sin[None])
    rotations = rotation_matrices(cos, sin)  # [T, dim, dim]
    torch.testing.assert_close((q.transpose(1, 2) @ rotations).transpose(1, 2), expected_q, rtol=0, atol=1e-6)
    torch.testing.assert_close((k.transpose(1, 2) @ rotations).transpose(1, 2), expected_k, rtol=0, atol=1e-6)
    assert torch.equal(rotations[0], torch.eye(dim))  # position 0 does not rotate


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 5])
def test_packed_linear_matches_f_linear(dtype, rows):
    weight, bias = torch.randn(48, 32, dtype=dtype), torch.randn(48, dtype=dtype)
    linear = PackedLinear(weight, bias, rows)
    for shape in ((rows, 32), (rows, 1, 32), (rows + 2, 32), (3, 4, 32)):  # other row counts work too
        x = torch.randn(*shape, dtype=dtype)
        tolerance = 1e-5 if dtype == torch.float32 else 5e-2
        torch.testing.assert_close(linear(x).float(), F.linear(x, weight, bias).float(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_linear_fuses_parts_and_keeps_only_the_packed_copy(dtype):
    parts = [torch.randn(48, 32, dtype=dtype), torch.randn(16, 32, dtype=dtype), torch.randn(8, 32, dtype=dtype)]
    bias = torch.randn(72, dtype=dtype)
    fused = torch.cat(parts)
    linear = PackedLinear(parts, bias, rows=4)
    assert linear.shape == (72, 32)
    if linear.kernel != "linear":
        assert linear._weight is None  # the fused plain copy is gone: the packed layout is the only extra copy
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2
    # the packed row count, fewer rows (zero-padded for MKL), more rows and a prefill shape (per-part products)
    for shape in ((4, 32), (4, 1, 32), (2, 1, 32), (1, 32), (6, 32), (4, 3, 32)):
        x = torch.randn(*shape, dtype=dtype)
        out = linear(x)
        assert out.shape == (*shape[:-1], 72)
        torch.testing.assert_close(out.float(), F.linear(x, fused, bias).float(), rtol=tolerance, atol=tolerance)


def test_packed_linear_uses_the_packed_kernels_on_this_cpu():
    # what the speed-up rests on: MKL packed SGEMM for float32, oneDNN's packed layout for bfloat16
    if torch.backends.mkl.is_available():
        assert PackedLinear(torch.randn(8, 4), None, 2).kernel == "mkl"
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert PackedLinear(torch.randn(8, 4, dtype=torch.bfloat16), None, 2).kernel == "onednn"
    assert PackedLinear(torch.randn(8, 4, dtype=torch.float64), None, 2).kernel == "linear"


def test_packed_decoder_lists_its_products_and_kernels():
    ar = _ar()
    decoder = PackedARDecoder(ar, rows=2, max_length=4, logit_ranges=[(5, 20), (80, 81), (0, 64), (0, 64)])
    widths = [linear.shape for linear in decoder.linears]
    assert widths == [(3 * 64, 64), (64, 64), (2 * 176, 64), (64, 176)] * 2 + [(64, 64), (15, 64), (1, 64)]  # heads by range: (0, 64), (5, 20), (80, 81)
    if torch.backends.mkl.is_available():
        assert decoder.kernels == {"mkl"}


def test_packed_linear_falls_back_when_the_packed_kernel_disagrees(monkeypatch):
    monkeypatch.setattr(torch.ops.mkl, "_mkl_linear", lambda x, packed, weight, bias, rows: torch.zeros(1))
    weight = torch.randn(8, 4)
    linear = PackedLinear(weight, None, 2)
    assert linear.kernel == "linear"
    x = torch.randn(2, 4)
    assert torch.equal(linear(x), F.linear(x, weight))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_packed_decoder_gives_the_logits_of_the_stock_forward(variant):
    ar = _ar(variant)
    vocab = ar.config.vocabulary
    ids = torch.randint(0, vocab.visual_vocab_size, (3, 9))
    ids[:, 0] = vocab.class_token_ids(torch.tensor([0, 4, 9]))
    with torch.no_grad():
        expected = ar(ids).logits  # [3, 9, vocab]
        embeds = ar.get_input_embeddings()(ids)
        decoder = PackedARDecoder(ar, rows=3, max_length=9)
        prefill = decoder.forward(embeds[:, :4], keep=4)  # [3, 4, vocab]
        steps = [decoder.forward(embeds[:, t : t + 1]) for t in range(4, 9)]
    torch.testing.assert_close(prefill, expected[:, :4], rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cat(steps, dim=1), expected[:, 4:], rtol=0, atol=1e-5)


def test_packed_decoder_restricts_the_head_to_the_step_range():
    ar = _ar()
    embeds = ar.get_input_embeddings()(torch.tensor([[3], [7]]))
    with torch.no_grad():
        full = PackedARDecoder(ar, rows=2, max_length=4).forward(embeds)
        ranges = [(5, 20), (0, 64), (80, 81), (0, 64)]
        restricted = PackedARDecoder(ar, rows=2, max_length=4, logit_ranges=ranges).forward(embeds, step=0)
    torch.testing.assert_close(restricted[..., 5:20], full[..., 5:20], rtol=0, atol=1e-6)
    assert restricted[..., :5].eq(0).all() and restricted[..., 20:].eq(0).all()


def test_packed_decoder_refuses_overflow_and_late_multi_position_calls():
    ar = _ar()
    embeds = ar.get_input_embeddings()(torch.tensor([[3, 4], [5, 6]]))
    decoder = PackedARDecoder(ar, rows=2, max_length=3)
    with torch.no_grad():
        decoder.forward(embeds)
        with pytest.raises(ValueError, match="prefill"):
            decoder.forward(embeds)
        decoder.forward(embeds[:, :1])
        with pytest.raises(ValueError, match="holds 3 positions"):
            decoder.forward(embeds[:, :1])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("preset", ["prologue-B-B", "prologue-B-B-nocfg"])
def test_generate_ids_packed_equals_stock(variant, preset):
    ar, labels = _ar(variant), torch.tensor([0, 3, 9])
    params = SamplingParams.from_preset(preset, top_k=30)
    packed = generate_ids(ar, labels, params, generator=_seeded(1), decoder="packed", return_step_logits=True)
    stock = generate_ids(ar, labels, params, generator=_seeded(1), decoder="stock", return_step_logits=True)
    assert torch.equal(packed.ids, stock.ids)
    finite = torch.isfinite(stock.step_logits)
    assert torch.equal(torch.isfinite(packed.step_logits), finite)
    torch.testing.assert_close(packed.step_logits[finite], stock.step_logits[finite], rtol=0, atol=1e-5)


def test_generate_ids_packed_drops_the_unconditional_rows_like_stock():
    # guidance only on the prologue: the doubled batch ends after step K - 1 (keep_first_rows on the packed cache)
    ar, labels = _ar(), torch.tensor([1, 2])
    params = SamplingParams(prologue_guidance=GuidanceSchedule(3.0), top_k=20)
    kwargs = dict(generator=_seeded(4), return_step_logits=True)
    packed = generate_ids(ar, labels, params, decoder="packed", **kwargs)
    stock = generate_ids(ar, labels, params, generator=_seeded(4), return_step_logits=True, use_cache=False)
    assert torch.equal(packed.ids, stock.ids)
    finite = torch.isfinite(stock.step_logits)
    torch.testing.assert_close(packed.step_logits[finite], stock.step_logits[finite], rtol=0, atol=1e-5)


def test_generate_ids_packed_with_a_fixed_prologue_equals_stock():
    ar, labels = _ar("qk_norm_axes_rope"), torch.tensor([1, 2])
    prologue = torch.tensor([[0, 15, 3, 3], [7, 7, 1, 12]])
    kwargs = dict(prologue_ids=prologue, return_step_logits=True)
    packed = generate_ids(ar, labels, "prologue-B-B", generator=_seeded(5), decoder="packed", **kwargs)
    stock = generate_ids(ar, labels, "prologue-B-B", generator=_seeded(5), decoder="stock", **kwargs)
    assert torch.equal(packed.ids, stock.ids) and torch.equal(packed.prologue_ids, prologue)
    finite = torch.isfinite(stock.step_logits)
    torch.testing.assert_close(packed.step_logits[finite], stock.step_logits[finite], rtol=0, atol=1e-5)


def test_generate_ids_bf16_packed_stays_close_to_stock():
    ar = _ar().to(torch.bfloat16)
    params = SamplingParams.from_preset("prologue-B-B", top_k=1)  # greedy: compare logits step by step
    packed = generate_ids(ar, torch.tensor([2, 6]), params, decoder="packed", return_step_logits=True)
    stock = generate_ids(ar, torch.tensor([2, 6]), params, decoder="stock", return_step_logits=True)
    first = packed.step_logits[:, 0]  # same prefix: same inputs, only the kernels differ
    finite = torch.isfinite(first)
    torch.testing.assert_close(first[finite], stock.step_logits[:, 0][finite], rtol=0, atol=0.1)
    agree = (packed.ids == stock.ids).float().mean()
    assert agree > 0.5, f"bfloat16 packed and stock greedy ids agree on only {agree:.0%} of positions"


class _Hooked(PrologueARForCausalLM):
    pass


class _LoraLikeLinear(nn.Linear):
    pass


def _lora_like(linear: nn.Linear) -> _LoraLikeLinear:
    replaced = _LoraLikeLinear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    replaced.load_state_dict(linear.state_dict())
    return replaced


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda ar: ar.model.register_forward_pre_hook(lambda *a: None), "forward hooks"),
        (lambda ar: setattr(ar.model.layers[0].mlp, "down_proj", _lora_like(ar.model.layers[0].mlp.down_proj)),
         "replaced linear"),
        (lambda ar: ar.train(), "training mode with dropout"),
        (lambda ar: setattr(ar, "__class__", _Hooked), "not a plain"),
    ],
)
def test_unsupported_models_fall_back_to_the_stock_forward(change, reason):
    ar = tiny_ar(seed=0, hidden_dropout=0.1) if "dropout" in reason else tiny_ar(seed=0)
    assert packed_decoder_unsupported(ar) is None
    change(ar)
    assert reason in packed_decoder_unsupported(ar)
    with pytest.raises(ValueError, match=f"decoder='packed' cannot run this model: .*{reason}"):
        generate_ids(ar, torch.tensor([1]), decoder="packed")
    if "dropout" in reason:
        return  # auto + dropout in training mode samples with dropout: not comparable to a reference
    auto = generate_ids(ar, torch.tensor([1, 2]), "prologue-B-B", generator=_seeded(0))
    stock = generate_ids(ar, torch.tensor([1, 2]), "prologue-B-B", generator=_seeded(0), decoder="stock")
    assert torch.equal(auto.ids, stock.ids)


def test_generate_ids_rejects_an_unknown_decoder():
    with pytest.raises(ValueError, match="decoder must be 'auto', 'packed' or 'stock'"):
        generate_ids(_ar(), torch.tensor([1]), decoder="fast")


def test_gqa_without_sdpa_enable_gqa_repeats_the_kv_heads(monkeypatch):
    # torch < 2.5 has no `enable_gqa`: the decoder repeats key / value heads itself, with the same logits
    import prologue_hf.pipelines.decoding as decoding

    ar = _ar("gqa_biases")
    embeds = ar.get_input_embeddings()(torch.randint(0, 64, (2, 5)))
    with torch.no_grad():
        expected = ar(inputs_embeds=embeds).logits
        monkeypatch.setattr(decoding, "_SDPA_HAS_GQA", False)
        decoder = PackedARDecoder(ar, rows=2, max_length=5)
        got = torch.cat([decoder.forward(embeds[:, :2], keep=2)] + [decoder.forward(embeds[:, t : t + 1]) for t in (2, 3, 4)], 1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
