"""The decode path: the model's own forward with its ``nn.Linear`` modules swapped for packed ones
(``PackedLinear`` / ``packed_linears``) gives the ids and logits of the plain forward for every model option, through
``generate_ids`` too; the swap restores the model and leaves what it cannot pack alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prologue_hf import PrologueARForCausalLM
from prologue_hf.models.packed_linear import (
    PackedLinear,
    PackedWeight,
    SharedProduct,
    packed_kernel,
    packed_linears,
)
from prologue_hf.pipelines import GuidanceSchedule, SamplingParams, generate_ids
from prologue_hf.testing import seeded_generator as _seeded
from prologue_hf.testing import tiny_ar

VARIANTS = {
    "llama": {},
    "qk_norm_axes_rope": dict(use_qk_norm=True, rope_axes_dim=(8, 4, 4)),  # the official AR's options
    "gqa_biases": dict(num_key_value_heads=2, attention_bias=True, mlp_bias=True),
}
CAN_PACK_FP32 = packed_kernel(torch.float32, torch.device("cpu")) != "linear"


def _ar(variant: str = "llama", seed: int = 0) -> PrologueARForCausalLM:
    ar = tiny_ar(seed=seed, **VARIANTS[variant])
    with torch.no_grad():  # non-zero biases and norm weights, so folding or dropping one would show
        for name, param in ar.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.3 * torch.randn_like(param))
    return ar


def _assert_same_run(a, b, atol: float = 1e-5) -> None:
    assert torch.equal(a.ids, b.ids)
    finite = torch.isfinite(b.step_logits)
    assert torch.equal(torch.isfinite(a.step_logits), finite)
    torch.testing.assert_close(a.step_logits[finite], b.step_logits[finite], rtol=0, atol=atol)


# ------------------------------------------------------------------------------------------ PackedLinear
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 5])
def test_packed_linear_matches_f_linear(dtype, rows):
    linear = nn.Linear(32, 48).to(dtype)
    packed = PackedLinear(linear, rows)
    assert packed.weight is linear.weight and packed.bias is linear.bias  # the model's parameters, not copies
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2
    with torch.no_grad():
        # the packed row count, fewer rows (zero-padded for MKL), more rows and a prefill shape (F.linear)
        for shape in ((rows, 32), (rows, 1, 32), (rows + 2, 32), (3, 4, 32), (1, 1, 32)):
            x = torch.randn(*shape, dtype=dtype)
            out = packed(x)
            assert out.shape == (*shape[:-1], 48)
            expected = F.linear(x, linear.weight, linear.bias)
            torch.testing.assert_close(out.float(), expected.float(), rtol=tolerance, atol=tolerance)


def test_packed_linear_uses_the_packed_kernels_on_this_cpu():
    # what the speed-up rests on: MKL packed SGEMM for float32, oneDNN's packed layout for bfloat16
    if torch.backends.mkl.is_available():
        assert PackedLinear(nn.Linear(4, 8), 2).kernel == "mkl"
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert PackedLinear(nn.Linear(4, 8).to(torch.bfloat16), 2).kernel == "onednn"
    assert PackedLinear(nn.Linear(4, 8).double(), 2).kernel == "linear"
    with pytest.raises(ValueError, match="rows must be >= 1"):
        PackedLinear(nn.Linear(4, 8), 0)


def test_packed_linear_falls_back_when_the_packed_kernel_disagrees(monkeypatch):
    monkeypatch.setattr(PackedWeight, "_product", lambda self, x: torch.zeros(1))  # a kernel giving wrong results
    linear = nn.Linear(4, 8)
    packed = PackedLinear(linear, 2)
    assert packed.kernel == "linear"
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(packed(x), linear(x))


@pytest.mark.skipif(not CAN_PACK_FP32, reason="no MKL packed kernel in this build")
def test_packed_linear_takes_f_linear_when_a_gradient_is_needed():
    linear = nn.Linear(6, 3)
    packed = PackedLinear(linear, 2)
    x = torch.randn(2, 6)
    packed(x).sum().backward()  # the packed kernel has no backward: F.linear on the same parameters
    torch.testing.assert_close(linear.weight.grad, x.sum(0).expand(3, 6))
    linear.requires_grad_(False)  # frozen weights, an input that needs a gradient: F.linear too
    x = torch.randn(2, 6, requires_grad=True)
    packed(x).sum().backward()
    torch.testing.assert_close(x.grad, linear.weight.sum(0).expand(2, 6))


@pytest.mark.skipif(not CAN_PACK_FP32, reason="no MKL packed kernel in this build")
def test_siblings_share_one_product_only_for_the_same_unmodified_input():
    q, k, v = nn.Linear(16, 32), nn.Linear(16, 8, bias=False), nn.Linear(16, 8)
    shared = SharedProduct([q, k, v], rows=2)
    assert shared.packed.shape == (48, 16)
    modules = [PackedLinear(linear, 2, shared, i) for i, linear in enumerate((q, k, v))]
    calls = []
    product = shared.packed._product
    shared.packed._product = lambda x: calls.append(1) or product(x)
    x, y = torch.randn(2, 1, 16), torch.randn(2, 1, 16)
    with torch.no_grad():
        outs = [module(x) for module in modules]  # one product for the three
        assert len(calls) == 1
        for out, linear in zip(outs, (q, k, v)):
            torch.testing.assert_close(out, linear(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(modules[1](y), k(y), rtol=0, atol=1e-5)  # another input: computed anew
        x.mul_(2)  # the same tensor changed in place: not served from the old product
        torch.testing.assert_close(modules[2](x), v(x), rtol=0, atol=1e-5)
        assert len(calls) == 3
        wide = torch.randn(2, 5, 16)  # more rows than packed for: each sibling's own F.linear
        torch.testing.assert_close(modules[0](wide), q(wide), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------ the swap
@pytest.mark.skipif(not CAN_PACK_FP32, reason="no MKL packed kernel in this build")
def test_packed_linears_swaps_every_plain_linear_and_restores_them():
    ar = _ar("gqa_biases")
    originals = {name: module for name, module in ar.named_modules() if type(module) is nn.Linear}
    state = {k: v.clone() for k, v in ar.state_dict().items()}
    with packed_linears(ar, rows=2) as swapped:
        inside = {name: module for name, module in ar.named_modules() if isinstance(module, PackedLinear)}
        assert set(inside) == set(originals) and len(swapped) == len(originals)  # 7 per layer + the head
        attn, mlp = ar.model.layers[0].self_attn, ar.model.layers[0].mlp
        assert attn.q_proj.shared is attn.k_proj.shared is attn.v_proj.shared is not None  # fused q/k/v
        assert mlp.gate_proj.shared is mlp.up_proj.shared is not None and mlp.down_proj.shared is None
        assert ar.state_dict().keys() == state.keys()  # same parameter names and objects
        assert all(inside[name].weight is originals[name].weight for name in inside)
    assert {name: module for name, module in ar.named_modules() if type(module) is nn.Linear} == originals
    with pytest.raises(RuntimeError, match="boom"), packed_linears(ar, rows=2):
        raise RuntimeError("boom")
    assert not any(isinstance(module, PackedLinear) for module in ar.modules())  # restored after an error too
    assert all(torch.equal(state[k], v) for k, v in ar.state_dict().items())


class _LoraLikeLinear(nn.Linear):
    pass


@pytest.mark.skipif(not CAN_PACK_FP32, reason="no MKL packed kernel in this build")
def test_packed_linears_leaves_subclasses_hooked_modules_and_other_dtypes_alone():
    ar = _ar()
    mlp = ar.model.layers[0].mlp
    lora = _LoraLikeLinear(mlp.down_proj.in_features, mlp.down_proj.out_features, bias=False)
    lora.load_state_dict(mlp.down_proj.state_dict())
    mlp.down_proj = lora
    calls = []
    ar.model.layers[1].self_attn.o_proj.register_forward_hook(lambda *args: calls.append(1))
    with packed_linears(ar, rows=2):
        assert ar.model.layers[0].mlp.down_proj is lora
        assert type(ar.model.layers[1].self_attn.o_proj) is nn.Linear
        assert isinstance(ar.model.layers[1].self_attn.q_proj, PackedLinear)
        out = generate_ids(ar, torch.tensor([1]), pack_weights=False)  # the swapped model samples; the hook fires
    assert calls and out.ids.shape == (1, 21)
    with packed_linears(ar.double(), rows=2) as swapped:
        assert swapped == []  # float64: no packed kernel, nothing swapped


# ------------------------------------------------------------------------------------------ generate_ids
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("preset", ["prologue-B-B", "prologue-B-B-nocfg"])
def test_generate_ids_packed_equals_plain_and_full_recompute(variant, preset):
    ar, labels = _ar(variant), torch.tensor([0, 3, 9])
    params = SamplingParams.from_preset(preset, top_k=30)
    kwargs = dict(return_step_logits=True)
    packed = generate_ids(ar, labels, params, generator=_seeded(1), **kwargs)
    plain = generate_ids(ar, labels, params, generator=_seeded(1), pack_weights=False, **kwargs)
    full = generate_ids(ar, labels, params, generator=_seeded(1), use_cache=False, pack_weights=False, **kwargs)
    _assert_same_run(packed, plain)
    _assert_same_run(packed, full)


def test_generate_ids_packed_drops_the_unconditional_rows_like_the_reference():
    # guidance only on the prologue: the doubled batch ends after step K - 1 (fewer rows than packed for)
    ar, labels = _ar(), torch.tensor([1, 2])
    params = SamplingParams(prologue_guidance=GuidanceSchedule(3.0), top_k=20)
    packed = generate_ids(ar, labels, params, generator=_seeded(4), return_step_logits=True)
    full = generate_ids(ar, labels, params, generator=_seeded(4), return_step_logits=True, use_cache=False,
                        pack_weights=False)
    _assert_same_run(packed, full)


def test_generate_ids_packed_with_a_fixed_prologue_equals_plain():
    ar, labels = _ar("qk_norm_axes_rope"), torch.tensor([1, 2])
    prologue = torch.tensor([[0, 15, 3, 3], [7, 7, 1, 12]])
    kwargs = dict(prologue_ids=prologue, return_step_logits=True)
    packed = generate_ids(ar, labels, "prologue-B-B", generator=_seeded(5), **kwargs)
    plain = generate_ids(ar, labels, "prologue-B-B", generator=_seeded(5), pack_weights=False, **kwargs)
    _assert_same_run(packed, plain)
    assert torch.equal(packed.prologue_ids, prologue)


def test_generate_ids_bf16_packed_stays_close_to_plain():
    ar = _ar().to(torch.bfloat16)
    params = SamplingParams.from_preset("prologue-B-B", top_k=1)  # greedy: compare logits step by step
    packed = generate_ids(ar, torch.tensor([2, 6]), params, return_step_logits=True)
    plain = generate_ids(ar, torch.tensor([2, 6]), params, pack_weights=False, return_step_logits=True)
    first = packed.step_logits[:, 0]  # same prefix: same inputs, only the kernels differ
    finite = torch.isfinite(first)
    torch.testing.assert_close(first[finite], plain.step_logits[:, 0][finite], rtol=0, atol=0.1)
    agree = (packed.ids == plain.ids).float().mean()
    assert agree > 0.5, f"bfloat16 packed and plain greedy ids agree on only {agree:.0%} of positions"


def test_generate_ids_restores_the_model_and_keeps_the_forward_hooks_working():
    ar = _ar()
    seen = []
    handle = ar.model.register_forward_pre_hook(lambda m, a, kw: seen.append(m.training), with_kwargs=True)
    generate_ids(ar, torch.tensor([1, 2]), "prologue-B-B")
    handle.remove()
    assert seen == [False] * 21  # one forward per step, through the model's own modules
    assert not any(isinstance(module, PackedLinear) for module in ar.modules())
