"""What shapes a sampling run, apart from the model and the labels: classifier-free guidance schedules, temperatures,
top-k / top-p, and the paper's Table A5 settings by name.

Official behaviour reproduced (``ARModel.sampling`` of the authors' code):

* the CFG batch is ``[cond (class token), uncond (null class token)]``; the mix is ``w * cond + (1 - w) * uncond``;
* global mode (the official ``cfg`` / ``cfg_schedule`` / ``cfg_power``): ``t = s / T`` over the ``T = K + 1 + N``
  generated steps, ramps start at 1;
* segmented mode (paper §2.2, "CFG for Prologue"): prologue steps use ``t = s / K``, the EOS step and the visual
  steps use ``t = (s - K) / (T - K)`` (the EOS step is visual ``t = 0``), each segment with its own start value;
* a scale ``<= 0`` switches guidance off (the conditional logits are used as they are), as the official ``cfg > 0``
  test; scales in ``(0, 1)`` are real guidance (the paper's prologue scale 0.7).

Which step belongs to which segment is the vocabulary's knowledge (:meth:`PrologueVocabulary.segment_ids`); this
module only maps segments to schedules.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..vocabulary import SEGMENTS, PrologueVocabulary

SCHEDULES = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class GuidanceSchedule:
    r"""Classifier-free guidance weight ``w(t)`` over one segment (or over the whole sequence in global mode).

    With ``f(t)`` = ``0`` (constant), ``t`` (linear) or ``(1 - cos(pi * t ** power)) / 2`` (cosine)::

        constant:  w = scale
        otherwise: w = start + (scale - start) * f(t)

    and the logits are mixed as ``w * cond + (1 - w) * uncond``. ``scale <= 0`` means *no guidance* for the steps
    this schedule covers (the conditional logits are used unchanged, as the official code does when the scale is
    not positive).

    Args:
        scale: final (or constant) guidance scale ``s``.
        schedule: ``"constant"``, ``"linear"`` or ``"cosine"``.
        power: exponent ``p`` of ``t`` in the cosine schedule (official ``cfg_power``); must be > 0.
        start: ``w`` at ``t = 0`` for linear / cosine ramps. ``None`` takes the official default of the segment it
            is used for: 0.0 for the prologue (``semantic_cfg_start``), 1.0 for the visual segment
            (``visual_cfg_start``) and 1.0 in global mode.

    >>> GuidanceSchedule(3.0, "linear", start=1.0).weight(0.5)
    2.0
    """

    scale: float = 1.0
    schedule: str = "constant"
    power: float = 1.0
    start: float | None = None

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not self.power > 0:
            raise ValueError(f"power must be > 0, got {self.power}")
        for name in ("scale", "power", "start"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")

    @property
    def enabled(self) -> bool:
        """Whether this schedule guides at all (official: ``scale > 0``)."""
        return self.scale > 0

    def weight(self, t: float, default_start: float = 1.0) -> float:
        """``w(t)`` for ``t`` in ``[0, 1)``; ``default_start`` replaces ``start=None``."""
        if self.schedule == "constant":
            return float(self.scale)
        start = default_start if self.start is None else self.start
        ramp = t if self.schedule == "linear" else (1.0 - math.cos(math.pi * t**self.power)) / 2.0
        return float(start + (self.scale - start) * ramp)


def _as_schedule(value: GuidanceSchedule | dict | None, name: str) -> GuidanceSchedule | None:
    if value is None or isinstance(value, GuidanceSchedule):
        return value
    if isinstance(value, dict):
        return GuidanceSchedule(**value)
    raise ValueError(f"{name} must be a GuidanceSchedule, a dict of its fields or None, got {type(value).__name__}")


@dataclass(frozen=True)
class SamplingParams:
    r"""Everything that shapes one sampling run except the model and the labels.

    Guidance has two modes:

    * **global** (``guidance=...``): one schedule over all ``T = K + 1 + N`` generated steps with ``t = s / T`` and
      ramps starting at 1 (the official ``cfg``, ``cfg_schedule``, ``cfg_power``);
    * **segmented** (``prologue_guidance=...`` and/or ``visual_guidance=...``): the prologue steps use
      ``t = s / K``, the EOS and visual steps ``t = (s - K) / (T - K)``. A segment left at ``None`` is not guided.

    Giving both modes is an error; giving neither samples without guidance (no doubled batch).
    :meth:`from_official` maps the official keyword arguments (with their fall-backs) onto this class and
    :meth:`from_preset` returns the paper's Table A5 settings.

    Args:
        guidance: global-mode schedule.
        prologue_guidance: segmented-mode schedule of the K prologue steps (start defaults to 0.0).
        visual_guidance: segmented-mode schedule of the EOS and N visual steps (start defaults to 1.0).
        temperature: divides the (guided) logits of the EOS and visual steps, and of the prologue steps unless
            ``prologue_temperature`` is set; must be > 0.
        prologue_temperature: temperature of the prologue steps (official ``semantic_temperature``).
        top_k: keep the ``k`` largest logits (0 = off) at every step unless ``prologue_top_k`` is set.
        top_p: nucleus sampling threshold in ``(0, 1]`` (1 = off) at every step unless ``prologue_top_p`` is set.
        prologue_top_k: top-k of the prologue steps.
        prologue_top_p: top-p of the prologue steps.

    >>> params = SamplingParams.from_preset("prologue-B-B")
    >>> params.prologue_guidance.scale, params.visual_guidance.schedule, params.visual_guidance.power
    (0.7, 'cosine', 0.2)
    """

    guidance: GuidanceSchedule | None = None
    prologue_guidance: GuidanceSchedule | None = None
    visual_guidance: GuidanceSchedule | None = None
    temperature: float = 1.0
    prologue_temperature: float | None = None
    top_k: int = 0
    top_p: float = 1.0
    prologue_top_k: int | None = None
    prologue_top_p: float | None = None

    def __post_init__(self):
        for name in ("guidance", "prologue_guidance", "visual_guidance"):
            object.__setattr__(self, name, _as_schedule(getattr(self, name), name))
        if self.guidance is not None and (self.prologue_guidance is not None or self.visual_guidance is not None):
            raise ValueError(
                "give either `guidance` (global mode) or `prologue_guidance` / `visual_guidance` (segmented mode), "
                "not both"
            )
        for name in ("temperature", "prologue_temperature"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        for name in ("top_k", "prologue_top_k"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be an integer >= 0 (0 = off), got {value!r}")
        for name in ("top_p", "prologue_top_p"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must lie in (0, 1] (1 = off), got {value}")

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_preset(cls, name: str, **overrides) -> SamplingParams:
        """The paper's Table A5 sampling settings by name (see :data:`SAMPLING_PRESETS`); ``overrides`` replace
        fields, e.g. ``from_preset("prologue-B-B", top_k=100)``."""
        key = _PRESET_KEYS.get(name.lower())
        if key is None:
            raise ValueError(f"unknown sampling preset {name!r}; expected one of {sorted(SAMPLING_PRESETS)}")
        return dataclasses.replace(SAMPLING_PRESETS[key], **overrides)

    @classmethod
    def from_official(
        cls,
        cfg: float = 2.0,
        cfg_schedule: str = "constant",
        cfg_power: float = 1.0,
        temperature: float = 1.0,
        topK: int | None = None,  # noqa: N803 - the official argument names
        topP: float | None = None,  # noqa: N803
        semantic_cfg_schedule: str | None = None,
        semantic_cfg_scale: float | None = None,
        semantic_cfg_power: float | None = None,
        semantic_cfg_start: float = 0.0,
        visual_cfg_schedule: str | None = None,
        visual_cfg_scale: float | None = None,
        visual_cfg_power: float | None = None,
        visual_cfg_start: float = 1.0,
        semantic_temperature: float | None = None,
    ) -> SamplingParams:
        """Map the official ``ARModel.sampling`` keyword arguments onto :class:`SamplingParams`
        (``tests/fixtures/official-prologue-tiny/SPEC.md`` section 3).

        Segmented mode is used when either ``*_cfg_schedule`` is set; a segment's missing scale / power / schedule
        falls back to ``cfg`` / ``cfg_power`` / ``"constant"`` as in the official code. ``topK`` 0 or None and
        ``topP`` outside ``(0, 1)`` switch the filters off.
        """
        top_k = int(topK or 0)
        top_p = float(topP) if topP is not None and 0.0 < topP < 1.0 else 1.0
        common = dict(temperature=temperature, prologue_temperature=semantic_temperature, top_k=top_k, top_p=top_p)
        if semantic_cfg_schedule is None and visual_cfg_schedule is None:
            return cls(guidance=GuidanceSchedule(cfg, cfg_schedule, cfg_power, 1.0), **common)

        def segment(schedule, scale, power, start):
            return GuidanceSchedule(
                cfg if scale is None else scale,
                schedule or "constant",
                cfg_power if power is None else power,
                start,
            )

        return cls(
            prologue_guidance=segment(semantic_cfg_schedule, semantic_cfg_scale, semantic_cfg_power, semantic_cfg_start),
            visual_guidance=segment(visual_cfg_schedule, visual_cfg_scale, visual_cfg_power, visual_cfg_start),
            **common,
        )

    @classmethod
    def from_dict(cls, values: dict) -> SamplingParams:
        """Inverse of :meth:`to_dict`."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown SamplingParams fields {sorted(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict:
        """JSON-serialisable dict (schedules become dicts)."""
        return dataclasses.asdict(self)

    # ----------------------------------------------------------------- per-step plan
    @property
    def segmented(self) -> bool:
        return self.prologue_guidance is not None or self.visual_guidance is not None

    def guidance_weights(self, vocabulary: PrologueVocabulary) -> list[float | None]:
        """Guidance weight ``w`` of each of the ``T = vocabulary.num_generated_tokens`` steps; ``None`` = not guided.

        Step ``s`` samples generated token ``s``. In segmented mode the prologue steps form one ramp and the EOS and
        visual steps another (the official code counts the EOS step as the first visual step, ``t = 0``); with
        K = 0 every step is visual.

        >>> vocab = PrologueVocabulary(64, 16, 4, 16, 10)  # K = 4, T = 21
        >>> SamplingParams.from_preset("prologue-B-B").guidance_weights(vocab)[:5]
        [0.7, 0.7, 0.7, 0.7, 1.0]
        """
        total = vocabulary.num_generated_tokens
        in_prologue = self._prologue_steps(vocabulary)
        num_prologue = sum(in_prologue)
        weights: list[float | None] = []
        for s, prologue in enumerate(in_prologue):
            if not self.segmented:
                schedule, t, default_start = self.guidance, s / total, 1.0
            elif prologue:
                schedule, t, default_start = self.prologue_guidance, s / num_prologue, 0.0
            else:
                schedule, t, default_start = self.visual_guidance, (s - num_prologue) / (total - num_prologue), 1.0
            weights.append(schedule.weight(t, default_start) if schedule is not None and schedule.enabled else None)
        return weights

    def step_settings(self, vocabulary: PrologueVocabulary) -> list[tuple[float, int, float]]:
        """``(temperature, top_k, top_p)`` of each generated step (the prologue overrides apply to prologue steps)."""
        settings = []
        for prologue in self._prologue_steps(vocabulary):
            temperature = self.prologue_temperature if prologue and self.prologue_temperature is not None else self.temperature
            top_k = self.prologue_top_k if prologue and self.prologue_top_k is not None else self.top_k
            top_p = self.prologue_top_p if prologue and self.prologue_top_p is not None else self.top_p
            settings.append((float(temperature), int(top_k), float(top_p)))
        return settings

    @staticmethod
    def _prologue_steps(vocabulary: PrologueVocabulary) -> list[bool]:
        """Per generated step, whether it samples a prologue token (the vocabulary's segment of the step)."""
        prologue = SEGMENTS.index("prologue")
        return [segment == prologue for segment in vocabulary.segment_ids().tolist()]


def _table_a5(prologue_scale, visual_power, visual_scale, nocfg_prologue_t, nocfg_visual_t):
    cfg = SamplingParams(
        prologue_guidance=GuidanceSchedule(prologue_scale, "constant"),
        visual_guidance=GuidanceSchedule(visual_scale, "cosine", visual_power, 1.0),
    )
    nocfg = SamplingParams(temperature=nocfg_visual_t, prologue_temperature=nocfg_prologue_t)
    return cfg, nocfg


def _build_presets() -> dict[str, SamplingParams]:
    # Paper appendix Table A5 (sampling settings of every reported gFID). "w/o CFG" rows become "<name>-nocfg".
    # Prologue rows: prologue constant scale, visual cosine (start 1.0, the official visual_cfg_start default).
    prologue_rows = {
        "prologue-B-B": (0.7, 0.2, 3.75, 0.7, 0.9),
        "prologue-post": (0.6, 0.25, 3.75, 0.8, 0.8),
        "prologue-onestage": (0.8, 0.25, 3.75, 0.8, 0.8),
        "prologue-B-L": (0.8, 0.225, 3.0, 0.7, 0.9),
        "prologue-B-XL": (0.8, 0.25, 2.75, 0.8, 0.9),
        "prologue-L-B-convnext-s-4k": (0.65, 0.25, 2.75, 0.8, 0.95),
        "prologue-L-L": (0.7, 0.25, 2.5, 0.95, 0.9),
        "prologue-L-XL": (0.7, 0.225, 2.25, 1.0, 0.9),
        "prologue-L-B-vgg16-4k": (0.7, 0.25, 3.75, 0.8, 0.85),
        "prologue-L-B-convnext-s-16k": (0.65, 0.25, 3.25, 0.8, 0.95),
        "prologue-codebook-256": (0.7, 0.25, 3.25, 0.8, 0.9),
        "prologue-codebook-4096": (0.8, 0.25, 3.5, 0.8, 0.9),
        "prologue-K4": (0.6, 0.25, 2.5, 0.8, 0.9),
        "prologue-K64": (0.8, 0.25, 3.75, 0.8, 1.0),
        "prologue-probste-tau0.01": (0.65, 0.25, 2.5, 0.8, 0.9),
        "prologue-probste-tau1.0": (0.8, 0.25, 3.75, 0.8, 0.85),
        "prologue-dropout-0.0": (0.65, 0.25, 3.5, 0.8, 0.85),
        "prologue-dropout-1.0": (0.75, 0.25, 3.25, 0.8, 0.9),
    }
    presets: dict[str, SamplingParams] = {}
    for name, row in prologue_rows.items():
        presets[name], presets[f"{name}-nocfg"] = _table_a5(*row)
    # Baselines without prologue: one cosine schedule over the whole sequence (global mode), T = 1.0.
    baseline_rows = {"1d-B-B": (1.75, 19.0, 0.85), "2d-B-B": (1.5, 10.0, 0.85), "2d-L-B": (1.75, 5.0, 0.9)}
    for name, (power, scale, nocfg_t) in baseline_rows.items():
        presets[name] = SamplingParams(guidance=GuidanceSchedule(scale, "cosine", power))
        presets[f"{name}-nocfg"] = SamplingParams(temperature=nocfg_t)
    return presets


#: Table A5 of the paper by name (``SamplingParams.from_preset``): ``prologue-B-B`` is the Prologue B-B row with
#: CFG, ``prologue-B-B-nocfg`` its "w/o CFG" row, and so on for every row of the table.
SAMPLING_PRESETS: dict[str, SamplingParams] = _build_presets()
_PRESET_KEYS = {name.lower(): name for name in SAMPLING_PRESETS}


__all__ = ["GuidanceSchedule", "SAMPLING_PRESETS", "SCHEDULES", "SamplingParams"]
