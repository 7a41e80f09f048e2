"""Exponential moving average of a model, parameterised by a half-life in optimizer steps.

The official stage-1 code keeps EMA copies of encoder and decoder with ``ae_ema_halflife: 1000`` steps, i.e.
``decay = 0.5 ** (1 / 1000)``, updated after every optimizer step, and reconstructs / exports from the EMA weights
(``ema_reconstruction: True``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """A frozen deep copy of ``model`` tracking ``ema <- decay * ema + (1 - decay) * online`` after each update.

    Floating-point parameters and buffers are averaged; integer buffers (counters) are copied.

    Args:
        model: the online model; the copy keeps its class, so a ``PreTrainedModel`` EMA can ``save_pretrained``.
        halflife_steps: number of updates after which an old value's weight has halved (> 0).

    >>> online = nn.Linear(2, 2)
    >>> ema = ModelEMA(online, halflife_steps=1.0)  # decay 0.5
    >>> with torch.no_grad():
    ...     _ = online.weight.add_(2.0)
    >>> ema.update(online)
    >>> bool(torch.allclose(ema.model.weight, online.weight - 1.0))
    True
    """

    def __init__(self, model: nn.Module, halflife_steps: float):
        if halflife_steps <= 0:
            raise ValueError(f"halflife_steps must be > 0, got {halflife_steps}")
        self.halflife_steps = float(halflife_steps)
        self.decay = 0.5 ** (1.0 / self.halflife_steps)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model`` (same architecture as the copy)."""
        rate = 1.0 - self.decay
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach().to(ema_p.dtype), rate)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            if ema_b.is_floating_point():
                ema_b.lerp_(b.to(ema_b.dtype), rate)
            else:
                ema_b.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged model's state dict."""
        return self.model.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict)


__all__ = ["ModelEMA"]
