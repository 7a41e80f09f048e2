"""Sampling and the diffusers pipeline."""

from .sampling import (
    SAMPLING_PRESETS,
    GuidanceSchedule,
    PreallocatedCache,
    PrologueSegmentLogitsProcessor,
    SamplerOutput,
    SamplingParams,
    generate_ids,
)

__all__ = [
    "SAMPLING_PRESETS",
    "GuidanceSchedule",
    "PreallocatedCache",
    "PrologueSegmentLogitsProcessor",
    "SamplerOutput",
    "SamplingParams",
    "generate_ids",
]
