"""The Prologue sampler: one loop over the model's own forward, one token per step.

Used by :class:`~prologue_hf.ProloguePipeline` and by the training / evaluation scripts. The pieces live beside it:
:mod:`.sampling_params` (guidance schedules, temperatures, Table A5 presets), :mod:`.logits_processor` (the per-step
logits math: guidance mix, temperature, segment mask), :mod:`.filters` (top-k, top-p, the categorical draw),
:mod:`.kv_cache` (the KV cache) and :mod:`prologue_hf.models.packed_linear` (CPU weight packing as a layer swap).
Only :mod:`prologue_hf.vocabulary` knows the id layout.

A step ``s`` takes the logits of generated position ``s``, mixes the conditional and unconditional rows (CFG),
divides by the temperature, adds the segment mask, applies top-k and top-p and draws one id per row; the id is fed
back (the same id to both CFG halves) for the next step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from ..models.modeling_prologue_ar import PrologueARForCausalLM
from ..models.packed_linear import SegmentHead, packed_linears
from ..vocabulary import PrologueVocabulary
from .filters import filter_and_draw
from .kv_cache import PreallocatedCache
from .logits_processor import StepPlan
from .sampling_params import SamplingParams


@dataclass
class SamplerOutput(ModelOutput):
    """Output of :func:`generate_ids`.

    Args:
        ids: ``[B, K + 1 + N]`` generated combined-vocabulary ids (prologue + offset, EOS, visual), no class token.
        prologue_ids: ``[B, K]`` raw prologue ids in ``[0, P)``, or ``None`` when K = 0.
        visual_ids: ``[B, N]`` raw visual ids in ``[0, V)`` (what the tokenizer decodes).
        step_logits: ``[B, K + 1 + N, vocab]`` float32 logits each step sampled from: after the guidance mix, the
            temperature and the segment mask, before top-k / top-p (``None`` unless asked for).
    """

    ids: torch.LongTensor | None = None
    prologue_ids: torch.LongTensor | None = None
    visual_ids: torch.LongTensor | None = None
    step_logits: torch.Tensor | None = None


class _Decoder:
    """Feeds a growing sequence of ids to the AR's own forward and returns the logits of its last positions.

    With a cache (:class:`PreallocatedCache`) each call runs the new positions only; without one (``use_cache=False``,
    the reference the cache is tested against) it keeps the ids of the whole prefix and re-runs them all. Ids, not
    embeddings, go in: the embedding then runs inside the model's forward, where hooks on the model (accelerate's
    CPU offload) move its weights to the execution device first.
    """

    def __init__(self, ar: PrologueARForCausalLM, use_cache: bool, max_length: int):
        self.ar = ar
        self.cache = PreallocatedCache(ar.config.num_hidden_layers, max_length) if use_cache else None
        self.prefix: torch.Tensor | None = None  # [R, L], without a cache only
        self.length = 0
        head = ar.get_output_embeddings()
        # the swapped-in head that computes one step's id range (packed_linears(head_ranges=...)), if any
        self.head = head if isinstance(head, SegmentHead) else None
        self.step_ranges = ar.config.vocabulary.step_id_ranges()

    def __call__(self, ids: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """Append ``ids`` ``[R, L]``; logits ``[R, keep, vocab]`` of the last ``keep`` positions. With a
        :class:`SegmentHead`, a call that keeps one position computes only the logits of the ids its step may
        produce (the others are 0; the step's mask sets them to ``-inf``)."""
        start, self.length = self.length, self.length + ids.shape[1]
        if self.head is not None:
            self.head.active = self.step_ranges[self.length - 1] if keep == 1 else None
        if self.cache is None:
            self.prefix = ids if self.prefix is None else torch.cat([self.prefix, ids], dim=1)
            ids, start = self.prefix, 0
        positions = torch.arange(start, self.length, device=ids.device)[None]
        out = self.ar(
            input_ids=ids,
            position_ids=positions,
            cache=self.cache,
            use_cache=self.cache is not None,
            logits_to_keep=keep,
        )
        return out.logits

    def keep_first_rows(self, rows: int) -> None:
        """Drop every batch row from ``rows`` on (the unconditional CFG half once no step needs it); a view of the
        batch dimension, nothing is copied."""
        if self.cache is not None:
            self.cache.batch_select_indices(slice(0, rows))
        else:
            self.prefix = self.prefix[:rows]


def execution_device(model: torch.nn.Module) -> torch.device:
    """The device ``model``'s forward computes on: the ``execution_device`` of an accelerate hook on it or on one
    of its modules (CPU offload keeps the weights elsewhere, on ``meta`` or the CPU), else the device of its
    parameters."""
    for module in model.modules():
        device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    return next(model.parameters()).device


def _resolve_sampling(sampling: SamplingParams | str | None) -> SamplingParams:
    if sampling is None:
        return SamplingParams()
    if isinstance(sampling, str):
        return SamplingParams.from_preset(sampling)
    if not isinstance(sampling, SamplingParams):
        raise ValueError(f"sampling must be a SamplingParams, a preset name or None, got {type(sampling).__name__}")
    return sampling


def _prompt_ids(
    vocab: PrologueVocabulary, class_labels, prologue_ids
) -> tuple[torch.LongTensor, torch.LongTensor | None]:
    """Class token ids ``[B]`` (validated) and, for a fixed prologue, the generated ids it fixes ``[B, K + 1]``
    (prologue ids in the combined vocabulary, then EOS), built by the vocabulary."""
    class_ids = vocab.class_token_ids(torch.as_tensor(class_labels).cpu())
    batch = class_ids.shape[0]
    if batch == 0:
        raise ValueError("class_labels is empty")
    if prologue_ids is None:
        return class_ids, None
    if not vocab.has_prologue:
        raise ValueError("prologue_ids given, but the AR has num_prologue_tokens=0")
    prologue_ids = torch.as_tensor(prologue_ids).cpu()
    vocab.check_prologue_ids(prologue_ids)
    if prologue_ids.shape[0] != batch:
        raise ValueError(f"prologue_ids has {prologue_ids.shape[0]} rows but class_labels has {batch} entries")
    placeholder_visual = torch.zeros(batch, vocab.num_visual_tokens, dtype=torch.long)
    sequence = vocab.build_sequence(class_labels, placeholder_visual, prologue_ids)  # [B, 1 + K + 1 + N]
    return class_ids, sequence[:, 1 : 1 + vocab.visual_start]


@contextlib.contextmanager
def _progress(progress_bar, total: int):
    """``progress_bar``: ``None`` / ``False`` (none), ``True`` (tqdm) or a callable ``progress_bar(total=...)``."""
    if progress_bar is None or progress_bar is False:
        yield None
        return
    if progress_bar is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="sampling")
    elif callable(progress_bar):
        bar = progress_bar(total=total)
    else:
        raise ValueError("progress_bar must be None, a bool, or a callable taking total= (e.g. pipeline.progress_bar)")
    try:
        yield bar
    finally:
        if hasattr(bar, "close"):
            bar.close()


@torch.no_grad()
def generate_ids(
    ar: PrologueARForCausalLM,
    class_labels: torch.LongTensor,
    sampling: SamplingParams | str | None = None,
    prologue_ids: torch.LongTensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    use_cache: bool = True,
    pack_weights: bool = True,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    return_step_logits: bool = False,
    progress_bar=None,
    device: torch.device | str | None = None,
) -> SamplerOutput:
    r"""Sample ``[prologue][EOS][visual]`` ids from a Prologue AR, one token per step, through its own forward.

    Args:
        ar: the AR model (any device / dtype; logits are processed in float32).
        class_labels: ``[B]`` labels in ``[0, C]`` (``C`` = the null class, i.e. unconditional samples).
        sampling: guidance, temperatures, top-k / top-p, or a preset name; ``None`` = ``SamplingParams()`` (plain
            ancestral sampling without guidance).
        prologue_ids: ``[B, K]`` raw prologue ids in ``[0, P)`` to hold fixed (paper Fig. 1): they and the EOS are
            teacher-forced in one prefill and only the visual tokens are sampled.
        generator: seeds the categorical draws; the same generator state gives the same ids. A list of ``B``
            generators draws row ``i`` from generator ``i`` alone, so a batch reproduces the rows drawn one at a time.
        use_cache: ``True`` keeps a KV cache (:class:`PreallocatedCache`); ``False`` re-runs the whole prefix each
            step (slow; the reference the cache is tested against).
        pack_weights: while sampling, swap the model's plain ``nn.Linear`` modules for
            :class:`~prologue_hf.models.packed_linear.PackedLinear` (weights laid out once for the batch's row count:
            MKL packed SGEMM on CPU float32, oneDNN on CPU bfloat16; nothing is swapped elsewhere, nor in a model
            carrying accelerate hooks), restored on return. Holds one packed copy of the weights meanwhile;
            ``False`` samples with the model as it is.
        callback: called after every step as ``callback(step, ids)`` with ``ids`` ``[B]`` the combined-vocabulary ids
            of generated position ``step`` (forced positions included). ``ids`` is a view of the output: ids the
            callback writes into it are the ones fed back (a sampled step's only; forced and the last step's
            writes change the output alone).
        return_step_logits: also return the ``[B, T, vocab]`` final logits of every step.
        progress_bar: ``None`` / ``False`` (none), ``True`` (tqdm) or a callable ``progress_bar(total=T)`` returning
            an object with ``update()`` (e.g. a diffusers pipeline's ``progress_bar``).
        device: where the ids and logits live; ``None`` = :func:`execution_device` of ``ar`` (its parameters'
            device, or the execution device of accelerate's offload hooks on it).

    Returns:
        :class:`SamplerOutput` with ``ids`` ``[B, K + 1 + N]``, ``prologue_ids``, ``visual_ids`` and optionally
        ``step_logits``.

    >>> from prologue_hf.testing import tiny_ar
    >>> ar = tiny_ar()
    >>> out = generate_ids(ar, torch.tensor([1, 2]), SamplingParams.from_preset("prologue-B-B"),
    ...                    generator=torch.Generator().manual_seed(0))
    >>> out.ids.shape, out.visual_ids.shape
    (torch.Size([2, 21]), torch.Size([2, 16]))
    """
    sampling = _resolve_sampling(sampling)
    vocab: PrologueVocabulary = ar.config.vocabulary
    class_ids, forced_ids = _prompt_ids(vocab, class_labels, prologue_ids)
    if isinstance(generator, (list, tuple)) and len(generator) != class_ids.shape[0]:
        raise ValueError(
            f"generator is a list of {len(generator)} generators; expected one per row ({class_ids.shape[0]})"
        )
    device = execution_device(ar) if device is None else torch.device(device)
    plan = StepPlan.build(vocab, sampling, device)
    rows = 2 * class_ids.shape[0] if plan.unconditional_steps > 0 else class_ids.shape[0]
    packing = packed_linears(ar, rows, vocab.step_id_ranges()) if pack_weights else contextlib.nullcontext()
    with packing, _progress(progress_bar, plan.num_steps) as bar:

        def report(step: int, ids: torch.Tensor) -> None:
            if callback is not None:
                callback(step, ids)
            if bar is not None:
                bar.update()

        ids, step_logits = _sample_steps(
            ar, plan, class_ids, forced_ids, rows, use_cache, generator, report, return_step_logits, device
        )
    prologue, visual = vocab.split(ids)
    return SamplerOutput(ids=ids, prologue_ids=prologue, visual_ids=visual, step_logits=step_logits)


def _sample_steps(
    ar: PrologueARForCausalLM,
    plan: StepPlan,
    class_ids: torch.LongTensor,
    forced_ids: torch.LongTensor | None,
    rows: int,
    use_cache: bool,
    generator: torch.Generator | list[torch.Generator] | None,
    report: Callable[[int, torch.Tensor], None],
    return_step_logits: bool,
    device: torch.device,
) -> tuple[torch.LongTensor, torch.Tensor | None]:
    """The loop of :func:`generate_ids`: prefill (class token, plus a fixed prologue and EOS), then one decode step
    per sampled token; the unconditional rows are dropped once no later step mixes them."""
    batch, total = class_ids.shape[0], plan.num_steps
    ids = torch.empty(batch, total, dtype=torch.long, device=device)
    step_logits = torch.empty(batch, total, plan.mask.shape[-1], device=device) if return_step_logits else None
    null_ids = torch.full_like(class_ids, ar.config.vocabulary.null_class_id)
    prompt = torch.cat([class_ids, null_ids])[:rows, None].to(device)  # [R, 1]: [cond; uncond] class tokens
    forced = 0 if forced_ids is None else forced_ids.shape[1]
    if forced:
        ids[:, :forced] = forced_ids.to(device)
        prompt = torch.cat([prompt, ids[:, :forced].repeat(rows // batch, 1)], dim=1)
    decoder = _Decoder(ar, use_cache, max_length=total)  # the last sampled token is never fed back
    raw = decoder(prompt, keep=forced + 1)  # [R, forced + 1, vocab]
    for s in range(forced):
        if step_logits is not None:
            step_logits[:, s] = plan.final_logits(raw[:, s], batch, s)
        report(s, ids[:, s])
    raw = raw[:, -1]
    for s in range(forced, total):
        logits = plan.final_logits(raw, batch, s)
        if step_logits is not None:
            step_logits[:, s] = logits
        _, top_k, top_p = plan.settings[s]
        ids[:, s] = filter_and_draw(logits, top_k, top_p, generator)
        report(s, ids[:, s])
        if s + 1 == total:
            break
        if rows > batch and s + 1 >= plan.unconditional_steps:
            rows = batch
            decoder.keep_first_rows(rows)
        raw = decoder(ids[:, s : s + 1].repeat(rows // batch, 1))[:, -1]  # same id for both CFG halves
    return ids, step_logits


__all__ = ["SamplerOutput", "execution_device", "generate_ids"]
