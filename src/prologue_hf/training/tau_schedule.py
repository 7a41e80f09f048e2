"""A schedule for the Prob-STE temperature tau of the prologue quantizer (issue 15, Must-show 3).

tau sets how many codes receive gradient through Prob-STE per token (docs/training.md, choosing tau): a large tau early
keeps many codes alive while the encoder learns, a small one later sharpens the soft-max towards the hard one-hot the
forward pass uses. tau never changes the ids (the forward value is the argmax one-hot), so annealing it is safe for a
running AR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULE_KINDS = ("constant", "linear", "cosine", "exponential")


@dataclass
class ProbSTETemperatureSchedule:
    """tau from ``start`` to ``end`` over ``steps`` optimizer steps, then ``end``.

    ``kind``: ``"linear"``, ``"cosine"`` (half cosine), ``"exponential"`` (geometric: equal ratios per step, i.e.
    linear in ``log tau``) or ``"constant"`` (``start`` throughout).

    >>> round(ProbSTETemperatureSchedule(1.0, 0.1, 100, "exponential")(50), 4)
    0.3162
    """

    start: float
    end: float
    steps: int
    kind: str = "exponential"

    def __post_init__(self):
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"kind must be one of {SCHEDULE_KINDS}, got {self.kind!r}")
        if self.start <= 0 or self.end <= 0:
            raise ValueError(f"temperatures must be > 0, got start={self.start}, end={self.end}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return self.start
        if self.steps == 0 or step >= self.steps:
            return self.end
        t = max(step, 0) / self.steps
        if self.kind == "linear":
            return self.start + (self.end - self.start) * t
        if self.kind == "cosine":
            return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * t))
        return math.exp(math.log(self.start) + (math.log(self.end) - math.log(self.start)) * t)


__all__ = ["ProbSTETemperatureSchedule", "SCHEDULE_KINDS", "temperature_schedule_from_args"]


def temperature_schedule_from_args(args, model) -> ProbSTETemperatureSchedule | None:
    """The schedule that training arguments ``args`` ask for (``prologue_temperature_schedule``, ``_start``, ``_end``,
    ``_steps``), for ``model``'s prologue quantizer; missing ends default to its current tau. ``None`` when the
    model has no prologue quantizer or tau stays constant at the config's value."""
    quantizer = getattr(model, "prologue_quantizer", None)
    kind = getattr(args, "prologue_temperature_schedule", "constant")
    start, end = getattr(args, "prologue_temperature_start", None), getattr(args, "prologue_temperature_end", None)
    if quantizer is None or (kind == "constant" and start is None):
        return None
    default = float(quantizer.temperature)
    return ProbSTETemperatureSchedule(
        default if start is None else start, default if end is None else end,
        int(getattr(args, "prologue_temperature_steps", 0)), kind,
    )
