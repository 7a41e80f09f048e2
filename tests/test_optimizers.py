"""build_adamw: fused where torch has the kernel, the same updates as the for-loop AdamW within float rounding, and
used by every stage-1 / Post optimizer (issue 19: the for-loop's per-step allocations)."""

import pytest
import torch

from prologue_hf.training.optimizers import adamw_implementation, build_adamw


def _groups(params):
    # the stage-1 settings: tokenizer (beta1 = 0, no decay) and compact-AR groups (decay / no decay)
    return [
        {"params": params[:2], "betas": (0.0, 0.99), "weight_decay": 0.0, "name": "tokenizer"},
        {"params": params[2:3], "betas": (0.9, 0.99), "weight_decay": 0.03, "lr": 5e-4},
        {"params": params[3:], "betas": (0.9, 0.99), "weight_decay": 0.0},
    ]


def _run(make_optimizer, steps=6):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in [(64, 32), (32,), (128, 64), (64,)]]
    optimizer = make_optimizer(_groups(params))
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return optimizer, [p.detach().clone() for p in params]


def test_cpu_float_parameters_get_the_fused_kernel():
    optimizer, _ = _run(lambda groups: build_adamw(groups, lr=1e-3, eps=1e-8), steps=1)
    assert all(group["fused"] and not group["foreach"] for group in optimizer.param_groups)
    # per-group settings survive, extra keys (the group name the trainers log) too
    assert [g["betas"] for g in optimizer.param_groups] == [(0.0, 0.99), (0.9, 0.99), (0.9, 0.99)]
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 5e-4, 1e-3]
    assert optimizer.param_groups[0]["name"] == "tokenizer"


def test_fused_matches_the_for_loop_within_float_rounding():
    _, fused = _run(lambda groups: build_adamw(groups, lr=1e-3, eps=1e-8))
    _, loop = _run(lambda groups: torch.optim.AdamW(groups, lr=1e-3, eps=1e-8, foreach=False))
    _, start = _run(lambda groups: torch.optim.SGD(groups, lr=0.0))
    for a, b, s in zip(fused, loop, start):
        assert not torch.equal(b, s)  # the run moved the weights
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_tensor_without_the_kernel_falls_back_to_foreach():
    assert adamw_implementation([torch.zeros(2), torch.zeros(2, device="meta")]) == "foreach"
    assert adamw_implementation([torch.zeros(2, dtype=torch.bfloat16)]) == "fused"
    assert adamw_implementation([]) == "foreach"
    with pytest.raises(ValueError, match="fused / foreach"):
        build_adamw([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, fused=False)
