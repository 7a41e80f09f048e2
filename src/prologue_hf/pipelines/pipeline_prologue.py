"""ProloguePipeline: class labels -> images with a Prologue AR and its tokenizer (a diffusers ``DiffusionPipeline``).

Components by role, as diffusers' DiT pipeline: ``tokenizer`` (decodes visual ids: a
:class:`~prologue_hf.PrologueTokenizerModel`, or a :class:`~prologue_hf.ProloguePostModel` that decodes through its
frozen visual tokenizer) and ``ar`` (:class:`~prologue_hf.PrologueARForCausalLM`, samples ids through
:func:`~prologue_hf.pipelines.generate_ids`). ``model_index.json`` names both components under the library
``prologue_hf.pipelines`` so that ``ProloguePipeline.from_pretrained(folder_or_repo)`` reloads them. diffusers imports
nothing itself: it resolves a component's library from ``sys.modules`` and needs that module to expose the class and
its loadable base class (``PreTrainedModel``); ``prologue_hf.pipelines`` does both and is always imported along with
this class. ``DiffusionPipeline.from_pretrained`` cannot resolve the pipeline class itself (it lives outside
diffusers): call ``ProloguePipeline.from_pretrained``.
"""

from __future__ import annotations

import difflib
import os
import tempfile
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
from .sampling_params import SamplingParams

logger = logging.get_logger(__name__)

# Library written to model_index.json for both components. diffusers looks the class names *and* the base class
# `PreTrainedModel` up as attributes of this (already imported) module; prologue_hf.pipelines exports all three.
LIBRARY_NAME = "prologue_hf.pipelines"
OUTPUT_TYPES = ("pil", "np", "pt", "uint8")


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


class ProloguePipeline(DiffusionPipeline):
    r"""Class-conditional image generation with Prologue (arXiv 2605.06137).

    The AR samples ``[prologue][EOS][visual]`` ids (per-segment classifier-free guidance, paper §2.2); the tokenizer
    decodes the visual ids to pixels. The prologue tokens never reach the decoder.

    Args:
        tokenizer: the visual tokenizer whose ids the AR models.
        ar: the class-conditional AR.
        id2label: ``{class id: name}`` (or a list of names, index = class id); ``None`` uses the 1000 ImageNet names
            when the AR has 1000 classes. A name may list synonyms separated by commas (``"tench, Tinca tinca"``),
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

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | list[int | str] | torch.Tensor,
        num_images_per_label: int = 1,
        generator: torch.Generator | None = None,
        sampling: SamplingParams | str | None = None,
        prologue_ids: torch.LongTensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        return_ids: bool = False,
        callback=None,
    ) -> ProloguePipelineOutput | tuple:
        r"""Generate images for ``class_labels``.

        Args:
            class_labels: class ids in ``[0, C]`` (``C`` = unconditional) and/or names from ``id2label``.
            num_images_per_label: images per label (consecutive in the output).
            generator: seeds sampling; the same seed gives the same images.
            sampling: :class:`SamplingParams`, a preset name (``"prologue-B-B"``, ...), or ``None`` for the
                pipeline's ``default_sampling``.
            prologue_ids: raw prologue ids held fixed: ``[K]`` or ``[1, K]`` (all images), ``[num_labels, K]`` or
                ``[num_labels * num_images_per_label, K]``. Only the visual tokens are sampled (paper Fig. 1).
            output_type: ``"pil"``, ``"np"`` (``[B, H, W, C]`` in [0, 1]), ``"pt"`` (``[B, C, H, W]`` in [0, 1]) or
                ``"uint8"``.
            return_dict: return a :class:`ProloguePipelineOutput` instead of a tuple.
            return_ids: also return the sampled ids.
            callback: ``callback(step, ids)`` after every sampling step (see ``generate_ids``).

        Returns:
            :class:`ProloguePipelineOutput`, or ``(images,)`` / ``(images, ids)`` when ``return_dict=False``.
        """
        # 0. check inputs
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if isinstance(num_images_per_label, bool) or not isinstance(num_images_per_label, int) or num_images_per_label < 1:
            raise ValueError(f"num_images_per_label must be an integer >= 1, got {num_images_per_label!r}")
        label_ids = self._class_ids(class_labels)
        prologue_ids = self._prologue_ids(prologue_ids, len(label_ids), num_images_per_label)
        params = self._resolve_sampling(self.config.default_sampling if sampling is None else sampling)

        # 1. one row per image
        labels = torch.tensor(label_ids, dtype=torch.long).repeat_interleave(num_images_per_label)

        # 2. sample ids with the AR
        sampled = generate_ids(
            self.ar,
            labels,
            params,
            prologue_ids=prologue_ids,
            generator=generator,
            callback=callback,
            progress_bar=self.progress_bar,
        )

        # 3. decode the visual ids to pixels in [-1, 1] and post-process
        visual_ids = sampled.visual_ids.to(self.tokenizer.device)
        pixels = self.tokenizer.decode(visual_ids).pixel_values
        images = self.tokenizer.postprocess(pixels, output_type)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (images, sampled.ids) if return_ids else (images,)
        if not return_ids:
            return ProloguePipelineOutput(images=images)
        return ProloguePipelineOutput(
            images=images, ids=sampled.ids, prologue_ids=sampled.prologue_ids, visual_ids=sampled.visual_ids
        )

    # ------------------------------------------------------------------ Hub
    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
        license: str | None = None,
        model_card_text: str | None = None,
    ):
        """Save the pipeline with a generated model card (:func:`prologue_model_card`) and upload it to ``repo_id``.

        Creates the repository when missing (``private`` as given), writes ``model_index.json``, ``tokenizer/``,
        ``ar/`` and ``README.md`` into a temporary folder and uploads it in one commit through
        :class:`huggingface_hub.HfApi`. Returns the ``CommitInfo`` of the upload.
        """
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, safe_serialization=safe_serialization, variant=variant)
            card = prologue_model_card(self, repo_id=repo_id, license=license, extra_text=model_card_text)
            card.save(os.path.join(folder, "README.md"))
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message or "Upload ProloguePipeline",
                create_pr=create_pr,
            )


def _count(module: torch.nn.Module) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def prologue_model_card(
    pipeline: ProloguePipeline,
    repo_id: str | None = None,
    license: str | None = None,
    extra_text: str | None = None,
) -> ModelCard:
    """A model card for ``pipeline``: Hub metadata (library, tags, license) and a description of the tokenizer, the
    AR, the default sampling settings and how to load it.

    >>> from prologue_hf.testing import tiny_pipeline
    >>> card = prologue_model_card(tiny_pipeline(), repo_id="me/prologue-tiny")
    >>> card.data.library_name
    'prologue-hf'
    """
    tok, ar = pipeline.tokenizer.config, pipeline.ar.config
    data = ModelCardData(
        library_name="prologue-hf",
        license=license,
        pipeline_tag="unconditional-image-generation",
        tags=["prologue", "autoregressive", "image-generation", "class-conditional", "diffusers-pipeline"],
    )
    name = repo_id or "ProloguePipeline"
    location = repo_id or "path/to/pipeline_folder"
    sampling = pipeline.config.default_sampling
    sampling_line = (
        f"`{sampling}` (paper Table A5)" if isinstance(sampling, str) else "custom" if sampling else "none (no guidance)"
    )
    text = f"""---
{data.to_yaml()}
---

# {name}

A class-conditional image generator in the **Prologue** format ("Autoregressive Visual Generation Needs a Prologue",
arXiv 2605.06137): an autoregressive transformer samples {ar.num_prologue_tokens} prologue tokens, an EOS token and
{ar.num_visual_tokens} visual tokens; the tokenizer decodes the visual tokens into a {tok.image_size}x{tok.image_size}
image.

| component | class | parameters | details |
| --- | --- | --- | --- |
| `tokenizer` | `{type(pipeline.tokenizer).__name__}` | {_count(pipeline.tokenizer)} | patch {tok.patch_size}, \
visual codebook {tok.visual_codebook_size}, prologue codebook {tok.prologue_codebook_size}, K={tok.num_prologue_tokens} |
| `ar` | `{type(pipeline.ar).__name__}` | {_count(pipeline.ar)} | {ar.num_hidden_layers} layers, width \
{ar.hidden_size}, {ar.num_attention_heads} heads, {ar.num_classes} classes |

Default sampling: {sampling_line}.

## Usage

```python
import torch
from prologue_hf.pipelines import ProloguePipeline

pipe = ProloguePipeline.from_pretrained("{location}")
images = pipe(class_labels=[0, 1], generator=torch.Generator().manual_seed(0)).images
```

Loading needs the `prologue_hf` package installed: `model_index.json` names its classes.

## Citation

```bibtex
@article{{prologue2026,
  title   = {{Autoregressive Visual Generation Needs a Prologue}},
  journal = {{arXiv preprint arXiv:2605.06137}},
  year    = {{2026}}
}}
```
"""
    if extra_text:
        text += "\n" + extra_text.strip() + "\n"
    return ModelCard(text)


__all__ = ["ProloguePipeline", "ProloguePipelineOutput", "prologue_model_card"]
