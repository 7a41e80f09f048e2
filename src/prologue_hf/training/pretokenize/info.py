"""The on-disk format of a pretokenized dataset: its columns, its :class:`PretokenizedInfo` record, and loading.

A pretokenized dataset is a ``datasets.Dataset`` saved with ``save_to_disk``, one row per view of a source image::

    prologue_ids  [K]  int16 (int32 when the codebook does not fit)   raw prologue ids in [0, P)
    visual_ids    [N]  int16 (int32 when the codebook does not fit)   raw visual ids in [0, V)
    label         int  (ClassLabel when the source has class names)
    crop_index    int8  position + num_positions * flipped (0..4 unflipped TL, TR, BL, BR, centre; 5..9 flipped)
    image_index   int64 row of the source image (the crops of one image share it)

:class:`PretokenizedInfo` (the tokenizer's identity and vocabulary, the crop settings, the source) is stored in
``dataset.info.description`` as JSON and in ``prologue_pretokenized.json`` beside the arrow files, so a stage-2 run on
ids from another tokenizer is refused.

Note: ``datasets`` formats int16 columns as int64 under ``with_format("numpy" | "torch")`` unless ``dtype=None`` is
passed; :func:`load_pretokenized_dataset` sets that format so the ids stay int16 until the collator makes them long.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

import datasets
import numpy as np

from ...identity import config_hash, tokenizer_identity
from ...models import PrologueARConfig, PrologueTokenizerModel
from ...vocabulary import PrologueVocabulary, ar_vocabulary_fields, check_compatible

PRETOKENIZED_INFO_FILE = "prologue_pretokenized.json"
PRETOKENIZED_FORMAT = "prologue-pretokenized"
PRETOKENIZED_FORMAT_VERSION = 1


def ids_dtype(codebook_size: int) -> str:
    """Smallest signed integer dtype (``"int16"`` or ``"int32"``) that holds ids in ``[0, codebook_size)``.

    Signed because torch has no general uint16 support; int16 holds the paper's 16K visual and 1K prologue codebooks.
    """
    return "int16" if codebook_size <= np.iinfo(np.int16).max + 1 else "int32"



@dataclass
class PretokenizedInfo:
    """What a pretokenized dataset was made from; stored with the dataset and checked by stage-2 training.

    Args:
        tokenizer_identity: :func:`~prologue_hf.identity.tokenizer_identity` of the tokenizer that produced the ids.
        tokenizer_config_hash: :func:`~prologue_hf.identity.config_hash` of its config.
        tokenizer_name_or_path: where the tokenizer was loaded from (informational; moving it does not matter).
        visual_vocab_size, prologue_vocab_size, num_prologue_tokens, num_visual_tokens: the tokenizer's vocabulary.
        image_size: side of the tokenized crops.
        num_classes: real classes of the labels (``None`` if the source gave no class names and no labels).
        class_names: names of the classes when the source had a ``ClassLabel``.
        crops, hflip, crop_range: the view settings (see :class:`~prologue_hf.training.pretokenize.views.TenCropViews`).
        source, split: the source dataset name / path and split.
        num_images: source images tokenized; ``num_skipped``: images that could not be read (corrupt, not RGB-able).
        ids_dtype: storage dtype of the id columns.
    """

    tokenizer_identity: str
    tokenizer_config_hash: str
    visual_vocab_size: int
    prologue_vocab_size: int
    num_prologue_tokens: int
    num_visual_tokens: int
    image_size: int
    tokenizer_name_or_path: str | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    crops: str = "five"
    hflip: bool = True
    crop_range: float = 1.1
    source: str | None = None
    split: str | None = None
    num_images: int = 0
    num_skipped: int = 0
    ids_dtype: str = "int16"
    format: str = PRETOKENIZED_FORMAT
    format_version: int = PRETOKENIZED_FORMAT_VERSION

    @classmethod
    def from_tokenizer(
        cls, tokenizer: PrologueTokenizerModel, name_or_path: str | None = None, identity: str | None = None, **kwargs
    ) -> PretokenizedInfo:
        """Info whose tokenizer fields come from ``tokenizer`` (``identity`` defaults to its
        :func:`tokenizer_identity`; ``kwargs`` fill the rest)."""
        config = tokenizer.config
        vocab = PrologueVocabulary.from_tokenizer_config(config, num_classes=1)  # V, P, K, N (classes are the data's)
        return cls(
            tokenizer_identity=identity or tokenizer_identity(tokenizer),
            tokenizer_config_hash=config_hash(config),
            tokenizer_name_or_path=name_or_path if name_or_path is not None else (config.name_or_path or None),
            visual_vocab_size=vocab.visual_vocab_size,
            prologue_vocab_size=vocab.prologue_vocab_size if vocab.has_prologue else 0,  # K = 0: no prologue ids
            num_prologue_tokens=vocab.num_prologue_tokens,
            num_visual_tokens=vocab.num_visual_tokens,
            image_size=config.image_size,
            ids_dtype=ids_dtype(max(vocab.visual_vocab_size, vocab.prologue_vocab_size)),
            **kwargs,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PretokenizedInfo:
        values = json.loads(text)
        if not isinstance(values, dict) or values.get("format") != PRETOKENIZED_FORMAT:
            raise ValueError(f"not a {PRETOKENIZED_FORMAT} record: {text[:200]!r}")
        if values.get("format_version", 0) > PRETOKENIZED_FORMAT_VERSION:
            raise ValueError(
                f"pretokenized format version {values['format_version']} is newer than this library's "
                f"{PRETOKENIZED_FORMAT_VERSION}; upgrade prologue-hf"
            )
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_dataset(cls, dataset: datasets.Dataset | datasets.IterableDataset) -> PretokenizedInfo | None:
        """The info stored in ``dataset.info.description``, or ``None`` when the dataset carries none."""
        description = getattr(getattr(dataset, "info", None), "description", None) or ""
        if PRETOKENIZED_FORMAT not in description:
            return None
        return cls.from_json(description)

    # ------------------------------------------------------------------ checks
    def check_tokenizer(self, tokenizer: PrologueTokenizerModel) -> None:
        """Raise ``ValueError`` unless ``tokenizer`` is the one that produced the ids."""
        identity = tokenizer_identity(tokenizer)
        if identity != self.tokenizer_identity:
            raise ValueError(
                f"tokenizer mismatch: the dataset was tokenized by {self.tokenizer_identity} "
                f"({self.tokenizer_name_or_path or 'unknown path'}), the given tokenizer is {identity}"
                f"{' (' + tokenizer.config.name_or_path + ')' if tokenizer.config.name_or_path else ''}"
            )

    def check_ar_config(self, config: PrologueARConfig) -> None:
        """Raise ``ValueError`` unless the AR ``config`` can be trained on these ids: same vocabulary (V, P, K, N;
        :func:`~prologue_hf.vocabulary.check_compatible`), enough classes, and (when the config names one) the same
        tokenizer identity."""
        try:
            check_compatible(self, config)
        except ValueError as error:
            raise ValueError(
                f"the AR config's vocabulary does not match the pretokenized dataset's tokenizer "
                f"{self.tokenizer_identity}: {error}"
            ) from None
        if self.num_classes is not None and config.num_classes < self.num_classes:
            raise ValueError(
                f"the AR config has num_classes={config.num_classes} but the dataset's labels have {self.num_classes} classes"
            )
        if config.tokenizer_identity is not None and config.tokenizer_identity != self.tokenizer_identity:
            raise ValueError(
                f"tokenizer identity mismatch: the AR config was made for {config.tokenizer_identity}, the dataset was "
                f"tokenized by {self.tokenizer_identity} ({self.tokenizer_name_or_path or 'unknown path'})"
            )

    def ar_config_kwargs(self, num_classes: int | None = None, **overrides) -> dict:
        """The :class:`PrologueARConfig` keyword arguments of an AR for these ids: the vocabulary fields
        (:func:`~prologue_hf.vocabulary.ar_vocabulary_fields`, with its precedence rule for ``overrides``), the
        tokenizer identity and ``overrides``; ``num_classes`` defaults to the dataset's."""
        overrides.setdefault("tokenizer_identity", self.tokenizer_identity)
        if not self.num_prologue_tokens:
            # K = 0 datasets record P = 0; the AR config keeps its P >= 1 convention (no id is a prologue id)
            overrides.setdefault("prologue_vocab_size", 1)
        return ar_vocabulary_fields(self, num_classes, **overrides)


def output_features(info: PretokenizedInfo, label_feature: datasets.features.FeatureType | None = None) -> datasets.Features:
    """The ``datasets.Features`` of a pretokenized dataset (fixed-length integer lists; see the module docstring)."""
    # arrow has no fixed-size list of length 0: the 2D baseline (K = 0) stores empty variable-length lists
    prologue_length = info.num_prologue_tokens or -1
    return datasets.Features(
        {
            "prologue_ids": datasets.List(datasets.Value(info.ids_dtype), length=prologue_length),
            "visual_ids": datasets.List(datasets.Value(info.ids_dtype), length=info.num_visual_tokens),
            "label": label_feature if isinstance(label_feature, datasets.ClassLabel) else datasets.Value("int32"),
            "crop_index": datasets.Value("int8"),
            "image_index": datasets.Value("int64"),
        }
    )


def load_pretokenized_dataset(path_or_repo: str, split: str | None = None, **hub_kwargs) -> datasets.Dataset:
    """Load a pretokenized dataset saved with ``save_to_disk`` (or pushed to the Hub) and its :class:`PretokenizedInfo`.

    The result is formatted ``numpy`` with ``dtype=None``, so the id columns stay int16 (``datasets`` would
    otherwise upcast them to int64); :class:`~prologue_hf.training.trainer_ar.PrologueARDataCollator` makes them long.
    The info is in ``dataset.info.description`` (see :meth:`PretokenizedInfo.from_dataset`).
    """
    if os.path.isdir(path_or_repo):
        loaded = datasets.load_from_disk(path_or_repo)
        if isinstance(loaded, datasets.DatasetDict):
            if split is None:
                raise ValueError(f"{path_or_repo} holds splits {list(loaded)}; pass split=")
            loaded = loaded[split]
        info_file = os.path.join(path_or_repo, PRETOKENIZED_INFO_FILE)
        if PretokenizedInfo.from_dataset(loaded) is None and os.path.exists(info_file):
            with open(info_file) as handle:
                loaded.info.description = handle.read()
    else:
        from huggingface_hub import hf_hub_download

        loaded = datasets.load_dataset(path_or_repo, split=split or "train", **hub_kwargs)
        with open(hf_hub_download(path_or_repo, PRETOKENIZED_INFO_FILE, repo_type="dataset")) as handle:
            loaded.info.description = handle.read()
    if PretokenizedInfo.from_dataset(loaded) is None:
        raise ValueError(
            f"{path_or_repo} is not a pretokenized Prologue dataset (no {PRETOKENIZED_INFO_FILE} / info description); "
            "make it with examples/pretokenize.py"
        )
    return loaded.with_format("numpy", dtype=None)


__all__ = [
    "PRETOKENIZED_FORMAT",
    "PRETOKENIZED_FORMAT_VERSION",
    "PRETOKENIZED_INFO_FILE",
    "PretokenizedInfo",
    "ids_dtype",
    "load_pretokenized_dataset",
    "output_features",
]
