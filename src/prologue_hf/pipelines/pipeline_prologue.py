"""ProloguePipeline: class labels -> images with a Prologue AR and its tokenizer (a diffusers ``DiffusionPipeline``).

Components by role, as diffusers' DiT pipeline: ``tokenizer`` (decodes visual ids: a
:class:`~prologue_hf.PrologueTokenizerModel`, or a :class:`~prologue_hf.ProloguePostModel` that decodes through its
frozen visual tokenizer) and ``ar`` (:class:`~prologue_hf.PrologueARForCausalLM`, samples ids through
:func:`~prologue_hf.pipelines.generate_ids`). ``model_index.json`` names both components under the library
``prologue_hf.pipelines`` so that ``ProloguePipeline.from_pretrained(folder_or_repo)`` reloads them. diffusers imports
nothing itself: it resolves a component's library from ``sys.modules`` and needs that module to expose the class and
its loadable base class (``PreTrainedModel``); ``prologue_hf.pipelines`` does both and is always imported along with
this class. Without importing it first, ``DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline",
trust_remote_code=True)`` loads a saved folder through the one-line ``pipeline.py`` that ``save_pretrained`` writes.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from huggingface_hub import HfApi, ModelCard, ModelCardData
from transformers.utils import logging

from ..identity import tokenizer_identity
from ..models import PrologueARForCausalLM, PrologueTokenizerModel
from ..models.modeling_prologue_post import ProloguePostModel
from ..vocabulary import check_compatible
from .imagenet_labels import imagenet_id2label
from .sampling import generate_ids
from .sampling_params import GuidanceSchedule, SamplingParams

logger = logging.get_logger(__name__)

# Library written to model_index.json for both components. diffusers looks the class names *and* the base class
# `PreTrainedModel` up as attributes of this (already imported) module; prologue_hf.pipelines exports all three.
LIBRARY_NAME = "prologue_hf.pipelines"
OUTPUT_TYPES = ("pil", "np", "pt", "uint8")
# Written into every saved pipeline folder: diffusers' `custom_pipeline` loader imports this file from the folder
# (relative imports would fail there), so it only re-exports the class from the installed package.
PIPELINE_MODULE_FILE = "pipeline.py"
PIPELINE_MODULE_SOURCE = "from prologue_hf.pipelines.pipeline_prologue import ProloguePipeline  # noqa: F401\n"


@dataclass
class ProloguePipelineOutput(ImagePipelineOutput):
    """Images plus, with ``return_ids=True``, the sampled ids.

    Args:
        images: list of PIL images, ``np.ndarray`` ``[B, H, W, C]`` in ``[0, 1]``, or a tensor ``[B, C, H, W]``.
        ids: ``[B, K + 1 + N]`` generated combined-vocabulary ids (``None`` unless ``return_ids``).
        prologue_ids: ``[B, K]`` raw prologue ids (``None`` unless ``return_ids``, or when K = 0).
        visual_ids: ``[B, N]`` raw visual ids (``None`` unless ``return_ids``).
    """

    ids: torch.LongTensor | None = None
    prologue_ids: torch.LongTensor | None = None
    visual_ids: torch.LongTensor | None = None


def _normalize_id2label(id2label: dict | list | None, num_classes: int) -> dict[int, str] | None:
    """JSON round trips turn int keys into strings; check keys and return ``{int: str}``. A list of names is
    ``{index: name}``."""
    if id2label is None:
        return imagenet_id2label() if num_classes == 1000 else None
    if isinstance(id2label, (list, tuple)):
        id2label = dict(enumerate(id2label))
    if not isinstance(id2label, dict):
        raise ValueError(f"id2label must be a dict {{class id: name}} or a list of names, got {type(id2label).__name__}")
    normalized = {}
    for key, value in id2label.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"id2label keys must be class ids, got {key!r}") from None
        if not 0 <= index < num_classes:
            raise ValueError(f"id2label key {index} is outside the AR's classes [0, {num_classes})")
        normalized[index] = str(value)
    return normalized


def _config_names(config) -> dict[int, str] | None:
    """The class names an AR config records (``train_ar`` writes the dataset's into ``id2label``); ``None`` when it
    holds none or only transformers' placeholders (``LABEL_0``, ...)."""
    names = getattr(config, "id2label", None) or {}
    if len(names) != config.num_classes or all(str(v) == f"LABEL_{k}" for k, v in names.items()):
        return None
    return dict(names)


class ProloguePipeline(DiffusionPipeline):
    r"""Class-conditional image generation with Prologue (arXiv 2605.06137).

    The AR samples ``[prologue][EOS][visual]`` ids (per-segment classifier-free guidance, paper §2.2); the tokenizer
    decodes the visual ids to pixels. The prologue tokens never reach the decoder.

    Args:
        tokenizer: the visual tokenizer whose ids the AR models.
        ar: the class-conditional AR.
        id2label: ``{class id: name}`` (or a list of names, index = class id); ``None`` uses the names the AR's
            config records (``ar.config.id2label``, written by ``train_ar`` from the dataset), else the 1000 ImageNet
            names when the AR has 1000 classes. A name may list synonyms separated by commas (``"tench, Tinca tinca"``),
            each usable in :meth:`get_label_ids`.
        default_sampling: what ``__call__`` uses when ``sampling`` is not given: a preset name of
            :data:`~prologue_hf.pipelines.SAMPLING_PRESETS`, a :class:`SamplingParams` (stored as a dict)
            or ``None`` (plain sampling without guidance).
        verify_tokenizer_identity: when the AR's config records the tokenizer its ids came from
            (``tokenizer_identity``), check that ``tokenizer`` is that one (:meth:`check_tokenizer_identity`, also on
            ``register_modules``); also a keyword of ``from_pretrained``. ``False`` is the explicit opt-out; it is not
            saved.

    >>> from prologue_hf.testing import tiny_pipeline
    >>> pipe = tiny_pipeline()
    >>> out = pipe([1, 2], generator=torch.Generator().manual_seed(0), output_type="np")
    >>> out.images.shape
    (2, 32, 32, 3)
    """

    model_cpu_offload_seq = "ar->tokenizer"
    _callback_tensor_inputs = ["ids"]

    def __init__(
        self,
        tokenizer: PrologueTokenizerModel | ProloguePostModel,
        ar: PrologueARForCausalLM,
        id2label: dict | list | None = None,
        default_sampling: str | dict | SamplingParams | None = None,
        verify_tokenizer_identity: bool = True,
    ):
        super().__init__()
        self._verify_tokenizer_identity = verify_tokenizer_identity
        if not isinstance(tokenizer, (PrologueTokenizerModel, ProloguePostModel)):
            raise ValueError(
                f"tokenizer must be a PrologueTokenizerModel or a ProloguePostModel (Prologue-Post, decodes through "
                f"its frozen visual tokenizer), got {type(tokenizer).__name__}"
            )
        if not isinstance(ar, PrologueARForCausalLM):
            raise ValueError(f"ar must be a PrologueARForCausalLM, got {type(ar).__name__}")
        check_compatible(tokenizer.config, ar.config)
        self.register_modules(tokenizer=tokenizer, ar=ar)
        # name a public module (not the defining one) that exposes the classes and their base class
        self.register_to_config(
            tokenizer=(LIBRARY_NAME, type(tokenizer).__name__), ar=(LIBRARY_NAME, type(ar).__name__)
        )

        if id2label is None:
            id2label = _config_names(ar.config)
        id2label = _normalize_id2label(id2label, ar.config.num_classes)
        if isinstance(default_sampling, SamplingParams):
            default_sampling = default_sampling.to_dict()
        self._resolve_sampling(default_sampling)  # validate now, not at the first call
        self.register_to_config(id2label=id2label, default_sampling=default_sampling)
        self.labels: dict[str, int] = {}
        for index, names in (id2label or {}).items():
            for name in names.split(","):
                if name.strip():
                    self.labels.setdefault(name.strip().lower(), index)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> ProloguePipeline:
        """``DiffusionPipeline.from_pretrained``; a local pipeline folder without a component's subfolder (``ar/``,
        ``tokenizer/``) is a ``FileNotFoundError`` naming it (diffusers would read that component from the pipeline
        root and report a missing weights file there). A component passed as a keyword needs no subfolder."""
        folder = str(pretrained_model_name_or_path)
        if os.path.isfile(os.path.join(folder, "model_index.json")):
            for name in ("tokenizer", "ar"):
                if name not in kwargs and not os.path.isdir(os.path.join(folder, name)):
                    raise FileNotFoundError(
                        f"pipeline folder {folder} has no {name}/ subfolder (its model_index.json lists the {name!r} "
                        f"component); restore it or pass {name}=... to from_pretrained"
                    )
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_parts(
        cls,
        pipeline_name_or_path: str | None = None,
        tokenizer_name_or_path: str | None = None,
        ar_name_or_path: str | None = None,
        **kwargs,
    ) -> ProloguePipeline:
        """A pipeline folder / repo, or a tokenizer folder (``PrologueTokenizerModel`` or ``ProloguePostModel``, read
        with ``AutoModel``) plus an AR folder, as the example scripts accept them. ``kwargs`` go to the constructor
        (or to ``from_pretrained`` for a pipeline folder)."""
        if pipeline_name_or_path:
            return cls.from_pretrained(pipeline_name_or_path, **kwargs)
        if not (tokenizer_name_or_path and ar_name_or_path):
            raise ValueError("give pipeline_name_or_path, or both tokenizer_name_or_path and ar_name_or_path")
        from transformers import AutoModel

        tokenizer = AutoModel.from_pretrained(tokenizer_name_or_path)
        return cls(tokenizer=tokenizer, ar=PrologueARForCausalLM.from_pretrained(ar_name_or_path), **kwargs)

    def register_modules(self, **kwargs) -> None:
        """diffusers' ``register_modules``; once both components are set, the pair is first checked with
        :meth:`check_tokenizer_identity` (unless built with ``verify_tokenizer_identity=False``), so a refused swap
        leaves the pipeline as it was."""
        tokenizer, ar = (kwargs.get(name, getattr(self, name, None)) for name in ("tokenizer", "ar"))
        if tokenizer is not None and ar is not None and getattr(self, "_verify_tokenizer_identity", True):
            self.check_tokenizer_identity(tokenizer, ar)
        super().register_modules(**kwargs)

    @staticmethod
    def check_tokenizer_identity(
        tokenizer: PrologueTokenizerModel | ProloguePostModel, ar: PrologueARForCausalLM
    ) -> None:
        """``ValueError`` unless ``tokenizer`` is the one whose ids ``ar`` was trained on, when the AR config records it
        (``tokenizer_identity``; a converted official AR may not: then nothing is checked).

        The identity (:func:`~prologue_hf.identity.tokenizer_identity`) hashes the tokenizer's config and every weight:
        1 to 1.5 s for the B tokenizer on one CPU core (``benchmarks/bench_identity.py``). It is recorded from the
        weights as saved, so a tokenizer held in another dtype (e.g. loaded with ``torch_dtype=torch.bfloat16``) cannot
        be verified: a mismatch there is a warning.
        """
        recorded = ar.config.tokenizer_identity
        if recorded is None:
            return
        current = tokenizer_identity(tokenizer)
        if current == recorded:
            return
        message = (
            f"tokenizer identity mismatch: the AR was trained on the ids of tokenizer {recorded}, the given tokenizer "
            f"is {current}"
        )
        dtypes = {p.dtype for p in tokenizer.parameters() if p.is_floating_point()}
        if dtypes != {torch.float32}:
            logger.warning(f"{message}; not verifiable for a tokenizer held in {sorted(map(str, dtypes))}")
            return
        raise ValueError(
            f"{message}: it would decode the sampled ids into noise. Use the tokenizer the AR was trained with, or pass "
            "verify_tokenizer_identity=False (to ProloguePipeline or its from_pretrained) to skip this check"
        )

    # ------------------------------------------------------------------ labels
    @property
    def num_classes(self) -> int:
        return self.ar.config.num_classes

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Class names -> class ids (case-insensitive; a single string is one name, not a list of letters).

        >>> from prologue_hf.testing import tiny_pipeline
        >>> tiny_pipeline().get_label_ids(["class 3", "Class 7"])
        [3, 7]
        """
        names = [label] if isinstance(label, str) else list(label)
        if not self.labels:
            raise ValueError("this pipeline has no id2label names; pass class ids instead")
        ids = []
        for name in names:
            if not isinstance(name, str):
                raise ValueError(f"label names must be strings, got {name!r}")
            key = name.strip().lower()
            if key not in self.labels:
                close = difflib.get_close_matches(key, list(self.labels), n=5, cutoff=0.6)
                hint = f"; close matches: {close}" if close else ""
                raise ValueError(f"unknown label name {name!r}{hint}")
            ids.append(self.labels[key])
        return ids

    def _class_ids(self, class_labels) -> list[int]:
        if isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.reshape(-1).tolist()
        elif isinstance(class_labels, (int, str)):
            class_labels = [class_labels]
        ids = []
        for label in class_labels:
            if isinstance(label, str):
                ids.extend(self.get_label_ids(label))
            elif isinstance(label, (int, np.integer)) and not isinstance(label, bool):
                if not 0 <= int(label) <= self.num_classes:
                    raise ValueError(
                        f"class_labels must lie in [0, {self.num_classes}] ({self.num_classes} = unconditional), "
                        f"got {int(label)}"
                    )
                ids.append(int(label))
            else:
                raise ValueError(f"class_labels entries must be ints or names, got {label!r}")
        if not ids:
            raise ValueError("class_labels is empty")
        return ids

    # ------------------------------------------------------------------ sampling settings
    def _resolve_sampling(self, sampling) -> SamplingParams:
        if sampling is None:
            return SamplingParams()
        if isinstance(sampling, SamplingParams):
            return sampling
        if isinstance(sampling, str):
            return SamplingParams.from_preset(sampling)
        if isinstance(sampling, dict):
            return SamplingParams.from_dict(sampling)
        raise ValueError(f"sampling must be a SamplingParams, a preset name, a dict or None, got {type(sampling).__name__}")

    def _prologue_ids(self, prologue_ids, num_labels: int, num_images_per_label: int) -> torch.Tensor | None:
        if prologue_ids is None:
            return None
        prologue_ids = torch.as_tensor(prologue_ids)
        k = self.ar.config.num_prologue_tokens
        if prologue_ids.ndim == 1:
            prologue_ids = prologue_ids[None]
        if prologue_ids.ndim != 2 or prologue_ids.shape[1] != k:
            raise ValueError(f"prologue_ids must have shape [{k}] or [n, {k}], got {list(prologue_ids.shape)}")
        total = num_labels * num_images_per_label
        rows = prologue_ids.shape[0]
        if rows == 1:
            prologue_ids = prologue_ids.expand(total, k)
        elif rows == num_labels:
            prologue_ids = prologue_ids.repeat_interleave(num_images_per_label, dim=0)
        elif rows != total:
            raise ValueError(
                f"prologue_ids has {rows} rows; expected 1, one per label ({num_labels}) or one per image ({total})"
            )
        self.ar.config.vocabulary.check_prologue_ids(prologue_ids)
        return prologue_ids

    def _apply_guidance_scales(
        self, params: SamplingParams, guidance_scale: float | None, prologue_guidance_scale: float | None
    ) -> SamplingParams:
        """``params`` with diffusers-style constant scales in place of its guidance: ``guidance_scale`` guides the
        EOS and visual steps (segmented mode), ``prologue_guidance_scale`` the prologue steps. On a global-mode
        ``params`` (one schedule over every step, the baselines without prologue) ``guidance_scale`` replaces that
        schedule and a prologue scale has no segment to go to."""
        for name, value in (("guidance_scale", guidance_scale), ("prologue_guidance_scale", prologue_guidance_scale)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if guidance_scale is None and prologue_guidance_scale is None:
            return params
        if params.guidance is not None:  # global mode
            if prologue_guidance_scale is not None:
                raise ValueError(
                    "prologue_guidance_scale needs segmented guidance, but the sampling settings use one global "
                    "schedule (`guidance=`); pass guidance_scale alone, or segmented SamplingParams"
                )
            return dataclasses.replace(params, guidance=GuidanceSchedule(float(guidance_scale)))
        changes = {}
        if guidance_scale is not None:
            changes["visual_guidance"] = GuidanceSchedule(float(guidance_scale))
        if prologue_guidance_scale is not None:
            changes["prologue_guidance"] = GuidanceSchedule(float(prologue_guidance_scale))
        return dataclasses.replace(params, **changes)

    def _step_callback(self, callback, callback_on_step_end, tensor_inputs, batch: int, num_steps: int):
        """The ``callback(step, ids)`` that :func:`generate_ids` calls, serving both callback styles.

        ``callback_on_step_end(pipe, step, timestep, callback_kwargs)`` (diffusers >= 0.25) gets ``{"ids": [B, step +
        1]}`` (the ids generated so far); the dict it returns may hold a new ``"ids"``, whose last column replaces
        the ids of this step (what is fed back next); earlier columns are already in the cache and must not change.
        """
        if callback_on_step_end is None and callback is None:
            return None
        history = torch.empty(batch, num_steps, dtype=torch.long)
        vocabulary = self.ar.config.vocabulary
        allowed = vocabulary.logit_mask().isfinite()  # [T, vocab]

        def on_step(step: int, step_ids: torch.Tensor) -> None:
            if callback is not None:
                callback(step, step_ids)
            if callback_on_step_end is None:
                return
            history[:, step] = step_ids.cpu()
            tensors = {"ids": history[:, : step + 1].to(step_ids.device)}
            outputs = callback_on_step_end(self, step, step, {name: tensors[name] for name in tensor_inputs})
            new_ids = (outputs or {}).get("ids")
            if new_ids is None:
                return
            new_ids = torch.as_tensor(new_ids).cpu()
            if new_ids.shape != (batch, step + 1) or not torch.equal(new_ids[:, :step], history[:, :step]):
                raise ValueError(
                    f"callback_on_step_end returned ids of shape {list(new_ids.shape)}; expected [{batch}, {step + 1}] "
                    "with only the last column (this step) changed"
                )
            chosen = new_ids[:, step]
            in_range = bool((chosen >= 0).all() and (chosen < allowed.shape[1]).all())
            if not in_range or not bool(allowed[step, chosen].all()):
                raise ValueError(
                    f"callback_on_step_end returned ids not allowed at generated position {step} (see "
                    "PrologueVocabulary.logit_mask)"
                )
            history[:, step] = chosen
            step_ids.copy_(chosen.to(step_ids.device))

        return on_step

    def _generators(self, generator, total: int):
        if isinstance(generator, (list, tuple)):
            if len(generator) != total:
                raise ValueError(
                    f"generator is a list of {len(generator)} generators; expected one per image "
                    f"(len(class_labels) * num_images_per_label = {total})"
                )
            if not all(isinstance(g, torch.Generator) for g in generator):
                raise ValueError("generator must be a torch.Generator, a list of them, or None")
            return list(generator)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, a list of them, or None, got {type(generator).__name__}")
        return generator

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | list[int | str] | torch.Tensor,
        num_images_per_label: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        sampling: SamplingParams | str | None = None,
        prologue_ids: torch.LongTensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        return_ids: bool = False,
        callback: Callable[[int, torch.Tensor], None] | None = None,
        guidance_scale: float | None = None,
        prologue_guidance_scale: float | None = None,
        num_images_per_prompt: int | None = None,
        callback_on_step_end: Callable[[ProloguePipeline, int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ProloguePipelineOutput | tuple:
        r"""Generate images for ``class_labels``.

        Args:
            class_labels: class ids in ``[0, C]`` (``C`` = unconditional) and/or names from ``id2label``.
            num_images_per_label: images per label (consecutive in the output).
            generator: seeds sampling; the same seed gives the same images. A list holds one generator per image
                (``len(class_labels) * num_images_per_label``): image ``i`` depends on generator ``i`` alone, so a
                batch gives the images those generators give one at a time.
            sampling: :class:`SamplingParams`, a preset name (``"prologue-B-B"``, ...), or ``None`` for the
                pipeline's ``default_sampling``.
            prologue_ids: raw prologue ids held fixed: ``[K]`` or ``[1, K]`` (all images), ``[num_labels, K]`` or
                ``[num_labels * num_images_per_label, K]``. Only the visual tokens are sampled (paper Fig. 1).
            output_type: ``"pil"``, ``"np"`` (``[B, H, W, C]`` in [0, 1]), ``"pt"`` (``[B, C, H, W]`` in [0, 1]) or
                ``"uint8"``.
            return_dict: return a :class:`ProloguePipelineOutput` instead of a tuple.
            return_ids: also return the sampled ids.
            callback: deprecated ``callback(step, ids)`` after every sampling step (``ids`` ``[B]``, this step's);
                use ``callback_on_step_end``.
            guidance_scale: constant classifier-free guidance of the EOS and visual steps (diffusers' name),
                replacing the visual schedule of ``sampling``; 1 = the conditional logits unchanged, ``<= 0`` = off.
                With global-mode ``sampling`` (no prologue segment) it replaces the global schedule.
            prologue_guidance_scale: constant guidance of the prologue steps (the paper uses 0.6-0.8).
            num_images_per_prompt: diffusers' name of ``num_images_per_label``.
            callback_on_step_end: ``callback_on_step_end(pipe, step, timestep, callback_kwargs) -> dict`` after
                every step (``timestep`` = ``step``: an AR has no noise levels); ``callback_kwargs`` holds the tensors
                named in ``callback_on_step_end_tensor_inputs``: ``"ids"`` ``[B, step + 1]``, the combined-vocabulary
                ids generated so far. A returned ``"ids"`` replaces this step's ids (its last column).
            callback_on_step_end_tensor_inputs: names from ``pipe._callback_tensor_inputs`` (default ``["ids"]``).

        Returns:
            :class:`ProloguePipelineOutput`, or ``(images,)`` / ``(images, ids)`` when ``return_dict=False``.
        """
        # 0. check inputs
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if num_images_per_prompt is not None:
            if num_images_per_label not in (1, num_images_per_prompt):
                raise ValueError(
                    f"num_images_per_prompt={num_images_per_prompt} and num_images_per_label={num_images_per_label} "
                    "name the same setting; give one"
                )
            num_images_per_label = num_images_per_prompt
        if isinstance(num_images_per_label, bool) or not isinstance(num_images_per_label, int) or num_images_per_label < 1:
            raise ValueError(f"num_images_per_label must be an integer >= 1, got {num_images_per_label!r}")
        tensor_inputs = list(callback_on_step_end_tensor_inputs or self._callback_tensor_inputs)
        unknown = [name for name in tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs has {unknown}; expected names from {self._callback_tensor_inputs}"
            )
        if callback is not None:
            warnings.warn(
                "callback(step, ids) is deprecated; use callback_on_step_end(pipe, step, timestep, callback_kwargs)",
                FutureWarning,
                stacklevel=2,
            )
        label_ids = self._class_ids(class_labels)
        prologue_ids = self._prologue_ids(prologue_ids, len(label_ids), num_images_per_label)
        params = self._resolve_sampling(self.config.default_sampling if sampling is None else sampling)
        params = self._apply_guidance_scales(params, guidance_scale, prologue_guidance_scale)

        # 1. one row per image
        labels = torch.tensor(label_ids, dtype=torch.long).repeat_interleave(num_images_per_label)
        generator = self._generators(generator, labels.shape[0])
        num_steps = self.ar.config.vocabulary.num_generated_tokens
        on_step = self._step_callback(callback, callback_on_step_end, tensor_inputs, labels.shape[0], num_steps)

        # 2. sample ids with the AR, on the execution device (accelerate's offload hooks keep weights elsewhere)
        device = self._execution_device
        sampled = generate_ids(
            self.ar,
            labels,
            params,
            prologue_ids=prologue_ids,
            generator=generator,
            callback=on_step,
            progress_bar=self.progress_bar,
            device=device,
        )

        # 3. decode the visual ids to pixels in [-1, 1] and post-process
        _onload(self.tokenizer)
        pixels = self.tokenizer.decode(sampled.visual_ids.to(device)).pixel_values
        images = self.tokenizer.postprocess(pixels, output_type)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (images, sampled.ids) if return_ids else (images,)
        if not return_ids:
            return ProloguePipelineOutput(images=images)
        return ProloguePipelineOutput(
            images=images, ids=sampled.ids, prologue_ids=sampled.prologue_ids, visual_ids=sampled.visual_ids
        )

    # ------------------------------------------------------------------ saving and the Hub
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ) -> None:
        """``DiffusionPipeline.save_pretrained`` plus what makes the folder loadable without this package's name:
        ``pipeline.py`` (for ``DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline",
        trust_remote_code=True)``) and, in ``ar/`` and ``tokenizer/``, the ``auto_map`` module files of
        :func:`~prologue_hf.models.remote_code.write_remote_code` (written by the components' own
        ``save_pretrained``). With ``push_to_hub=True`` the folder is uploaded as :meth:`push_to_hub` does (our
        model card; ``repo_id``, ``token``, ``private``, ``commit_message``, ``create_pr``, ``subfolder``,
        ``license``, ``model_card_text`` from ``kwargs``)."""
        hub_kwargs = {
            name: kwargs.pop(name)
            for name in ("repo_id", "token", "private", "commit_message", "create_pr", "subfolder", "license",
                         "model_card_text")
            if name in kwargs
        }
        if kwargs:
            raise ValueError(f"save_pretrained got unexpected arguments {sorted(kwargs)}")
        if hub_kwargs and not push_to_hub:
            raise ValueError(f"{sorted(hub_kwargs)} only apply with push_to_hub=True")
        super().save_pretrained(
            save_directory, safe_serialization=safe_serialization, variant=variant, max_shard_size=max_shard_size
        )
        with open(os.path.join(save_directory, PIPELINE_MODULE_FILE), "w") as f:
            f.write(PIPELINE_MODULE_SOURCE)
        if push_to_hub:
            repo_id = hub_kwargs.pop("repo_id", os.path.basename(os.path.normpath(str(save_directory))))
            self._upload(save_directory, repo_id, **hub_kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
        subfolder: str | None = None,
        license: str | None = None,
        model_card_text: str | None = None,
    ):
        """Save the pipeline with a generated model card (:func:`prologue_model_card`) and upload it to ``repo_id``
        (under ``subfolder`` when given).

        Creates the repository when missing (``private`` as given), writes ``model_index.json``, ``pipeline.py``,
        ``tokenizer/``, ``ar/`` and ``README.md`` into a temporary folder and uploads it in one commit through
        :class:`huggingface_hub.HfApi`. Returns the ``CommitInfo`` of the upload.
        """
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, safe_serialization=safe_serialization, variant=variant)
            return self._upload(
                folder, repo_id, token=token, private=private, commit_message=commit_message, create_pr=create_pr,
                subfolder=subfolder, license=license, model_card_text=model_card_text,
            )

    def _upload(
        self,
        folder: str | os.PathLike,
        repo_id: str,
        token: str | None = None,
        private: bool | None = None,
        commit_message: str | None = None,
        create_pr: bool = False,
        subfolder: str | None = None,
        license: str | None = None,
        model_card_text: str | None = None,
    ):
        """Write our model card into the saved ``folder`` and upload the folder in one commit."""
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        card = prologue_model_card(self, repo_id=repo_id, license=license, extra_text=model_card_text, subfolder=subfolder)
        card.save(os.path.join(folder, "README.md"))
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            path_in_repo=subfolder,
            commit_message=commit_message or "Upload ProloguePipeline",
            create_pr=create_pr,
        )


def _onload(module: torch.nn.Module) -> None:
    """Let accelerate's model-level offload hook move ``module`` to the execution device before a method other than
    ``forward`` (``decode``) uses it, as diffusers' ``apply_forward_hook`` does for VAEs' ``decode``."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(module)


def _count(module: torch.nn.Module) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _describe_schedule(schedule: GuidanceSchedule, default_start: float) -> str:
    if schedule.schedule == "constant":
        return f"constant {schedule.scale:g}"
    start = default_start if schedule.start is None else schedule.start
    power = f", power {schedule.power:g}" if schedule.schedule == "cosine" else ""
    return f"{schedule.schedule} from {start:g} to {schedule.scale:g}{power}"


def describe_sampling(sampling: str | dict | SamplingParams | None) -> str:
    """One line saying what a pipeline's ``default_sampling`` does (preset name, guidance, temperatures, filters).

    >>> describe_sampling(None)
    'no guidance; temperature 1; no top-k / top-p'
    >>> describe_sampling({"visual_guidance": {"scale": 4.0}})
    'prologue steps unguided; visual guidance constant 4; temperature 1; no top-k / top-p'
    """
    name = sampling if isinstance(sampling, str) else None
    params = sampling if isinstance(sampling, SamplingParams) else None
    if params is None:
        params = SamplingParams() if sampling is None else (
            SamplingParams.from_preset(sampling) if name else SamplingParams.from_dict(sampling)
        )
    if params.guidance is not None:
        parts = [f"guidance over all steps {_describe_schedule(params.guidance, 1.0)}"] if params.guidance.enabled else []
    elif params.segmented:
        parts = []
        for label, schedule, start in (
            ("prologue", params.prologue_guidance, 0.0), ("visual", params.visual_guidance, 1.0)
        ):
            enabled = schedule is not None and schedule.enabled
            parts.append(f"{label} guidance {_describe_schedule(schedule, start)}" if enabled else f"{label} steps unguided")
        parts = ["; ".join(parts)]
    else:
        parts = []
    if not parts:
        parts = ["no guidance"]
    temperature = f"temperature {params.temperature:g}"
    if params.prologue_temperature is not None:
        temperature += f" (prologue {params.prologue_temperature:g})"
    parts.append(temperature)
    filters = []
    for label, value, prologue in (("top-k", params.top_k, params.prologue_top_k), ("top-p", params.top_p,
                                                                                  params.prologue_top_p)):
        off = value == (0 if label == "top-k" else 1.0)
        if not off or prologue is not None:
            filters.append(f"{label} {value:g}" + (f" (prologue {prologue:g})" if prologue is not None else ""))
    parts.append(", ".join(filters) if filters else "no top-k / top-p")
    text = "; ".join(parts)
    return f"`{name}` (paper Table A5): {text}" if name else text


def _class_names_line(id2label: dict | None, limit: int = 12) -> str:
    if not id2label:
        return "Classes: unnamed (pass class ids)."
    items = sorted((int(k), v) for k, v in id2label.items())
    shown = ", ".join(f"{k}: {v}" for k, v in items[:limit])
    more = f", ... ({len(items)} names in `model_index.json`'s `id2label`)" if len(items) > limit else ""
    return f"Classes ({len(items)}): {shown}{more}."


_CARD_TAGS = ("prologue", "autoregressive", "image-generation", "class-conditional", "diffusers-pipeline")

_CARD_CITATION = """## Citation

```bibtex
@article{prologue2026,
  title   = {Autoregressive Visual Generation Needs a Prologue},
  journal = {arXiv preprint arXiv:2605.06137},
  year    = {2026}
}
```
"""


def _card_description(pipeline: ProloguePipeline) -> str:
    """The card's overview: what the pipeline samples, a table of its two components, the default sampling
    settings and the class names."""
    tok, ar = pipeline.tokenizer.config, pipeline.ar.config
    return f"""A class-conditional image generator in the **Prologue** format ("Autoregressive Visual Generation Needs a Prologue",
arXiv 2605.06137): an autoregressive transformer samples {ar.num_prologue_tokens} prologue tokens, an EOS token and
{ar.num_visual_tokens} visual tokens; the tokenizer decodes the visual tokens into a {tok.image_size}x{tok.image_size}
image.

| component | class | parameters | details |
| --- | --- | --- | --- |
| `tokenizer` | `{type(pipeline.tokenizer).__name__}` | {_count(pipeline.tokenizer)} | patch {tok.patch_size}, \
visual codebook {tok.visual_codebook_size}, prologue codebook {tok.prologue_codebook_size}, K={tok.num_prologue_tokens} |
| `ar` | `{type(pipeline.ar).__name__}` | {_count(pipeline.ar)} | {ar.num_hidden_layers} layers, width \
{ar.hidden_size}, {ar.num_attention_heads} heads, {ar.num_classes} classes |

Default sampling: {describe_sampling(pipeline.config.default_sampling)}.

{_class_names_line(pipeline.config.id2label)}"""


def _card_usage(pipeline: ProloguePipeline, repo_id: str | None, subfolder: str | None) -> str:
    """The card's "Usage" section: loading the pipeline (with prologue_hf, or through diffusers' / transformers'
    remote code) from ``repo_id`` (and its ``subfolder``), then sampling the first named class."""
    if subfolder:  # diffusers loads pipelines from a repository's root only: fetch the subfolder, load it locally
        fetch = (f'from huggingface_hub import snapshot_download\n\nfolder = snapshot_download("{repo_id}", '
                 f'allow_patterns="{subfolder}/*") + "/{subfolder}"\n')
        location, ar_location = "folder", 'folder + "/ar"'
    else:
        fetch = ""
        location = f'"{repo_id}"' if repo_id else '"path/to/pipeline_folder"'
        ar_location = f'{location}, subfolder="ar"'
    id2label = pipeline.config.id2label
    first_label = f'"{id2label[min(id2label, key=int)].split(",")[0].strip()}"' if id2label else "0"
    return f"""## Usage

```python
{fetch}import torch
from prologue_hf.pipelines import ProloguePipeline

pipe = ProloguePipeline.from_pretrained({location})
images = pipe(class_labels=[{first_label}], guidance_scale=4.0, prologue_guidance_scale=0.7,
              generator=torch.Generator().manual_seed(0)).images
```

Loading needs the `prologue_hf` package installed (`pip install prologue-hf`): `model_index.json` names its classes.
Without importing it first, diffusers loads the folder through its `pipeline.py`:

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained({location}, custom_pipeline="pipeline", trust_remote_code=True)
```

and transformers loads a component through the `auto_map` of its `config.json`:
`AutoModelForCausalLM.from_pretrained({ar_location}, trust_remote_code=True)`."""


def prologue_model_card(
    pipeline: ProloguePipeline,
    repo_id: str | None = None,
    license: str | None = None,
    extra_text: str | None = None,
    subfolder: str | None = None,
) -> ModelCard:
    """A model card for ``pipeline``: Hub metadata (library, tags, license) and a description of the tokenizer, the
    AR, the default sampling settings, the class names and how to load it (``subfolder``: where in the repository
    the pipeline lives).

    >>> from prologue_hf.testing import tiny_pipeline
    >>> card = prologue_model_card(tiny_pipeline(), repo_id="me/prologue-tiny")
    >>> card.data.library_name
    'prologue-hf'
    """
    data = ModelCardData(
        library_name="prologue-hf",
        license=license,
        pipeline_tag="unconditional-image-generation",
        tags=list(_CARD_TAGS),
    )
    text = (f"---\n{data.to_yaml()}\n---\n\n# {repo_id or 'ProloguePipeline'}\n\n{_card_description(pipeline)}\n\n"
            f"{_card_usage(pipeline, repo_id, subfolder)}\n\n{_CARD_CITATION}")
    if extra_text:
        text += "\n" + extra_text.strip() + "\n"
    return ModelCard(text)


__all__ = ["ProloguePipeline", "ProloguePipelineOutput", "describe_sampling", "prologue_model_card"]
