"""The AR forward's cheaper-but-identical pieces (issue 14, sampling speed): ``PrologueARRMSNorm`` and
``apply_rotary`` give Llama's values and gradients bit for bit, so training numerics are unchanged; the sampler's
``SegmentHead`` gives the full head's logits on the step's id range and 0 elsewhere, and the sampled ids and final
(masked) logits of the full head."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb

from prologue_hf.models.modeling_prologue_ar import PrologueARRMSNorm, apply_rotary
from prologue_hf.models.packed_linear import PackedLinear, SegmentHead, packed_kernel, packed_linears
from prologue_hf.pipelines import SamplingParams, generate_ids
from prologue_hf.testing import seeded_generator, tiny_ar

CAN_PACK_FP32 = packed_kernel(torch.float32, torch.device("cpu")) != "linear"


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("autocast", [False, True])
def test_rms_norm_is_llamas_bit_for_bit_with_gradients(input_dtype, weight_dtype, autocast):
    llama, ours = LlamaRMSNorm(96, eps=1e-6), PrologueARRMSNorm(96, eps=1e-6)
    with torch.no_grad():
        llama.weight.copy_(torch.randn(96, generator=torch.Generator().manual_seed(0)) * 0.5 + 1.0)
        ours.weight.copy_(llama.weight)
    llama.to(weight_dtype), ours.to(weight_dtype)
    x = (torch.randn(3, 7, 96, generator=torch.Generator().manual_seed(1)) * 4).to(input_dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        expected, out = llama(x), ours(x)
    assert out.dtype == expected.dtype and torch.equal(out, expected)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(2)).to(expected.dtype)
    expected_grads = torch.autograd.grad(expected, (x, llama.weight), grad)
    grads = torch.autograd.grad(out, (x, ours.weight), grad)
    assert all(torch.equal(a, b) for a, b in zip(grads, expected_grads))


def test_model_norms_are_prologue_norms_with_llamas_state_dict_keys():
    ar = tiny_ar(use_qk_norm=True)
    norms = [m for m in ar.modules() if isinstance(m, LlamaRMSNorm)]
    assert norms and all(type(m) is PrologueARRMSNorm for m in norms)  # layers, q/k norms and the final norm
    assert "model.layers.0.input_layernorm.weight" in ar.state_dict()
    assert "model.layers.0.self_attn.q_norm.weight" in ar.state_dict()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_rotary_is_llamas_rope_bit_for_bit_with_gradients(dtype):
    ar = tiny_ar()
    rotary = ar.model.rotary_emb
    generator = torch.Generator().manual_seed(3)
    heads, length, head_dim = 4, 9, ar.config.hidden_size // ar.config.num_attention_heads
    q = torch.randn(2, heads, length, head_dim, generator=generator).to(dtype).requires_grad_()
    k = torch.randn(2, heads, length, head_dim, generator=generator).to(dtype).requires_grad_()
    positions = torch.arange(3, 3 + length)[None].expand(2, -1)
    cos, sin = LlamaRotaryEmbedding.forward(rotary, q, positions)  # Llama's own cos / sin
    expected = apply_rotary_pos_emb(q, k, cos, sin)
    ours_cos, signed_sin = rotary(q, positions)  # [B, 1, L, head_dim]
    assert ours_cos.shape == (2, 1, length, head_dim) and torch.equal(ours_cos[:, 0], cos)
    out = (apply_rotary(q, ours_cos, signed_sin), apply_rotary(k, ours_cos, signed_sin))
    assert all(torch.equal(a, b) for a, b in zip(out, expected))
    grads = [torch.randn(t.shape, generator=generator).to(dtype) for t in expected]
    expected_grads = torch.autograd.grad(expected, (q, k), grads)
    assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(out, (q, k), grads), expected_grads))


def test_rotary_with_official_axes_rotates_only_the_first_channels():
    ar = tiny_ar(rope_axes_dim=(8, 4, 4))
    x = torch.randn(1, 2, 5, 16)
    cos, signed_sin = ar.model.rotary_emb(x, torch.arange(5)[None])
    rotated = apply_rotary(x, cos, signed_sin)
    half = 8
    # channel pairs (i, i + half) with i >= axis_dim / 2 have frequency 0: left as they are
    assert torch.equal(rotated[..., 4:half], x[..., 4:half]) and torch.equal(rotated[..., half + 4 :], x[..., half + 4 :])
    assert not torch.equal(rotated[..., 1:4], x[..., 1:4])


def test_eval_forward_skips_dropout_train_forward_applies_it():
    ar = tiny_ar(seed=0, hidden_dropout=0.5, embedding_dropout=0.5)
    ids = torch.tensor([[1, 5, 7, 9]])
    ar.eval()
    with torch.no_grad():
        assert torch.equal(ar(ids).logits, ar(ids).logits)
    ar.train()
    torch.manual_seed(0)
    first = ar(ids).logits
    torch.manual_seed(1)
    assert not torch.equal(first, ar(ids).logits)  # dropout active in training mode


# ------------------------------------------------------------------------------------------ SegmentHead
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_segment_head_computes_the_active_range_only(dtype, bias):
    head = nn.Linear(16, 40, bias=bias).to(dtype)
    ranges = [(0, 24), (24, 25), (30, 40)]
    segment = SegmentHead(head, ranges, rows=2)
    assert segment.weight is head.weight and segment.bias is head.bias
    x = torch.randn(2, 1, 16).to(dtype)
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    with torch.no_grad():
        full = head(x)
        assert torch.equal(segment(x), full)  # active=None: the whole head
        for lo, hi in ranges:
            segment.active = (lo, hi)
            for rows in (x, x[:1], torch.randn(5, 1, 16).to(dtype)):  # packed rows, fewer, more
                out = segment(rows)
                assert out.shape == (*rows.shape[:-1], 40)
                torch.testing.assert_close(out[..., lo:hi].float(), head(rows)[..., lo:hi].float(), rtol=tolerance,
                                           atol=tolerance)
                outside = torch.ones(40, dtype=torch.bool)
                outside[lo:hi] = False
                assert torch.equal(out[..., outside], torch.zeros_like(out[..., outside]))
    segment.active = (0, 24)
    x.requires_grad_()
    torch.testing.assert_close(segment(x), head(x))  # a gradient is needed: the whole head, differentiable
    with pytest.raises(ValueError, match="ranges must lie in"):
        SegmentHead(head, [(30, 41)], rows=2)


@pytest.mark.skipif(not CAN_PACK_FP32, reason="no MKL packed kernel in this build")
def test_packed_linears_with_head_ranges_swaps_the_head_for_a_segment_head():
    ar = tiny_ar()
    ranges = ar.vocabulary.step_id_ranges()
    with packed_linears(ar, rows=2, head_ranges=ranges) as swapped:
        assert isinstance(ar.lm_head, SegmentHead) and ar.lm_head in swapped
        assert isinstance(ar.model.layers[0].self_attn.q_proj, PackedLinear)
    assert type(ar.lm_head) is nn.Linear
    with packed_linears(ar, rows=2) as swapped:  # without ranges: a packed head, as before
        assert isinstance(ar.lm_head, PackedLinear)


@pytest.mark.parametrize("preset", ["prologue-B-B", "prologue-B-B-nocfg"])
def test_generate_ids_with_the_segment_head_equals_the_full_head(preset):
    ar, labels = tiny_ar(seed=2), torch.tensor([0, 3, 9])
    params = SamplingParams.from_preset(preset, top_k=30)
    kwargs = dict(return_step_logits=True)
    packed = generate_ids(ar, labels, params, generator=seeded_generator(1), **kwargs)
    full = generate_ids(ar, labels, params, generator=seeded_generator(1), use_cache=False, pack_weights=False,
                        **kwargs)
    assert torch.equal(packed.ids, full.ids)
    finite = torch.isfinite(full.step_logits)
    assert torch.equal(torch.isfinite(packed.step_logits), finite)  # same masked (-inf) ids at every step
    torch.testing.assert_close(packed.step_logits[finite], full.step_logits[finite], rtol=0, atol=1e-5)
