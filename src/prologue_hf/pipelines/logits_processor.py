"""The per-step logits math of a Prologue sampling run, and its ``transformers`` ``generate()`` entry.

:class:`StepPlan` holds, per generated step, everything the step's logits go through: the guidance weight, the
temperature, the additive segment mask (from :meth:`PrologueVocabulary.logit_mask`), top-k and top-p. It is computed
once on the host before the loop (no per-step recomputation or host sync). :func:`~prologue_hf.pipelines.generate_ids`
and :class:`PrologueSegmentLogitsProcessor` both apply it through :meth:`StepPlan.final_logits`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.generation.logits_process import LogitsProcessor

from ..vocabulary import PrologueVocabulary
from .sampling_params import SamplingParams


@dataclass
class StepPlan:
    """Per-step constants of one sampling run.

    Args:
        weights: guidance weight of each step (``None`` = not guided).
        settings: ``(temperature, top_k, top_p)`` of each step.
        mask: ``[T, vocab]`` float32 additive segment mask (0 allowed, ``-inf`` elsewhere).
    """

    weights: list[float | None]
    settings: list[tuple[float, int, float]]
    mask: torch.Tensor = field(repr=False)

    @classmethod
    def build(cls, vocabulary: PrologueVocabulary, sampling: SamplingParams, device=None) -> StepPlan:
        weights, settings = sampling.guidance_weights(vocabulary), sampling.step_settings(vocabulary)
        return cls(weights, settings, vocabulary.logit_mask(device=device, dtype=torch.float32))

    @property
    def num_steps(self) -> int:
        return len(self.weights)

    def mixes(self, step: int) -> bool:
        """Whether ``step`` needs the unconditional logits (guided with ``w != 1``; ``w = 1`` is cond exactly)."""
        w = self.weights[step]
        return w is not None and w != 1.0

    @property
    def unconditional_steps(self) -> int:
        """The batch is doubled for steps ``0 .. unconditional_steps - 1`` (0 = never)."""
        mixing = [s for s in range(self.num_steps) if self.mixes(s)]
        return mixing[-1] + 1 if mixing else 0

    def final_logits(self, raw: torch.Tensor, batch: int, step: int) -> torch.Tensor:
        """Raw logits ``[R, vocab]`` of ``step`` (``R = batch``, or ``2 * batch`` with the unconditional rows below
        the conditional ones) -> final float32 logits ``[batch, vocab]``: guidance mix, temperature, segment mask
        (the official order); top-k / top-p come after, in :func:`filter_and_draw`."""
        raw = raw.float()
        logits = raw[:batch]
        if self.mixes(step):
            w = self.weights[step]
            logits = w * logits + (1.0 - w) * raw[batch : 2 * batch]
        temperature = self.settings[step][0]
        if temperature != 1.0:
            logits = logits / temperature
        if self.mask.device != logits.device:
            self.mask = self.mask.to(logits.device)
        return logits + self.mask[step]


class PrologueSegmentLogitsProcessor(LogitsProcessor):
    """Segment mask for :meth:`transformers.GenerationMixin.generate`.

    Generated position ``s = input_ids.shape[1] - prompt_length`` may only produce the ids the vocabulary allows
    there (prologue ids, then EOS, then visual ids). Use it as::

        ar.generate(input_ids=class_token_ids[:, None],
                    logits_processor=[PrologueSegmentLogitsProcessor(ar.config.vocabulary)])

    (the AR's ``generation_config`` already samples ``K + 1 + N`` new tokens). With classifier-free guidance add
    ``guidance_scale=s, negative_prompt_ids=torch.full_like(class_token_ids[:, None], vocabulary.null_class_id)``:
    transformers' guidance processor runs before this one and mixes the log-softmaxed streams, the same distribution
    as the library's constant global guidance (``PrologueARForCausalLM.generate`` refuses ``guidance_scale`` without
    ``negative_prompt_ids``, which would guide against the class token itself and change nothing).

    It applies :meth:`StepPlan.final_logits` of an unguided plan at temperature 1, i.e. the sampler's own mask step.
    ``generate`` applies its temperature / top-k / top-p warpers after custom processors, so they act on masked
    logits (the official order) and a segment is never emptied. Limits: guidance is one constant scale on every
    step, one temperature / top-k / top-p for all segments, no fixed prologue; use :func:`generate_ids` for those.
    """

    def __init__(self, vocabulary: PrologueVocabulary, prompt_length: int = 1):
        self.vocabulary = vocabulary
        self.prompt_length = prompt_length
        self.plan = StepPlan.build(vocabulary, SamplingParams())

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        if not 0 <= step < self.plan.num_steps:
            raise ValueError(
                f"generated position {step} is outside the {self.plan.num_steps} positions of a Prologue sequence; "
                f"use max_new_tokens={self.vocabulary.num_generated_tokens}"
            )
        return self.plan.final_logits(scores, scores.shape[0], step).to(scores.dtype)


__all__ = ["PrologueSegmentLogitsProcessor", "StepPlan"]
