"""The one AdamW constructor of the training code: fused kernels wherever torch has them.

``torch.optim.AdamW``'s default on the CPU is the per-parameter for-loop, which allocates several temporaries per
parameter and step: on a 200M-parameter stage-1 model that churns pages (issue 19 measured 251k page faults and 1 s of
system CPU per step) and makes the optimizer step ~3x slower than the fused kernel. Every optimizer the trainers
build (stage-1 tokenizer / compact-AR groups, the discriminator, the official stage-1 mode) goes through
:func:`build_adamw`; stage 2 gets the same kernel from ``TrainingArguments.optim`` (``adamw_torch_fused``).

The fused kernel computes the same update in one pass per tensor; it is not bit-identical to the for-loop (float
rounding of the update, about 1 ulp of the weight per step, ``tests/test_optimizers.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.optimizer import _get_fused_kernels_supported_devices

__all__ = ["build_adamw", "adamw_implementation"]


def adamw_implementation(params: Iterable[torch.Tensor]) -> str:
    """``"fused"`` if every tensor is a floating-point tensor on a device with torch's fused AdamW kernel, else
    ``"foreach"`` (one multi-tensor pass per group: the same arithmetic as the for-loop, fewer allocations)."""
    devices = set(_get_fused_kernels_supported_devices())
    params = list(params)
    if params and all(p.is_floating_point() and p.device.type in devices for p in params):
        return "fused"
    return "foreach"


def build_adamw(params: Iterable[torch.Tensor] | Iterable[dict], **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, **kwargs)`` with ``fused=True`` when :func:`adamw_implementation` allows it,
    else ``foreach=True``.

    Args:
        params: tensors, or parameter-group dicts (each with ``"params"`` and per-group settings, as for AdamW).
        **kwargs: AdamW's defaults (``lr``, ``betas``, ``eps``, ``weight_decay``); ``fused`` / ``foreach`` are chosen
            here and must not be passed.
    """
    if "fused" in kwargs or "foreach" in kwargs:
        raise ValueError("build_adamw chooses fused / foreach itself; do not pass them")
    params = list(params)
    if params and isinstance(params[0], dict):
        groups = [dict(group, params=list(group["params"])) for group in params]
    else:
        groups = [{"params": params}]
    implementation = adamw_implementation(p for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, **kwargs, **{implementation: True})
