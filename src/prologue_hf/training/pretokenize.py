"""Stage-2 pretokenization: a frozen tokenizer turns an image dataset into compact integer ids (paper appendix E).

Stage 2 trains the full-size AR "from scratch on the frozen tokenizer", so every image is tokenized once, up front,
with the paper's "ten-crop" augmentation: the image is resized and centre-cropped to a square of side
``image_size * crop_range`` (1.1, LlamaGen's ``crop_range``), then the four corner crops and the centre crop of side
``image_size`` are taken, each with and without a horizontal flip (torchvision's ``TenCrop`` layout). Each view is one
row of the output dataset::

    prologue_ids  [K]  int16 (int32 when the codebook does not fit)   raw prologue ids in [0, P)
    visual_ids    [N]  int16 (int32 when the codebook does not fit)   raw visual ids in [0, V)
    label         int  (ClassLabel when the source has class names)
    crop_index    int8  position + num_positions * flipped (0..4 unflipped TL, TR, BL, BR, centre; 5..9 flipped)
    image_index   int64 row of the source image (the crops of one image share it)

The output is a ``datasets.Dataset`` written with ``save_to_disk``; :class:`PretokenizedInfo` (the tokenizer's
identity and vocabulary, the crop settings, the source) is stored in ``dataset.info.description`` as JSON and in
``prologue_pretokenized.json`` beside the arrow files, so a stage-2 run on ids from another tokenizer is refused.

Work is split into *shards* of ``shard_size`` source images, each written to ``<output_dir>/_shards/`` the moment it
is done; a restarted run skips finished shards. Under ``accelerate launch`` shard ``i`` belongs to process
``i % num_processes`` (for map-style datasets the shard boundaries do not depend on the number of processes, so a run
may resume with a different one); the main process merges the shards at the end.

Note: ``datasets`` formats int16 columns as int64 under ``with_format("numpy" | "torch")`` unless ``dtype=None`` is
passed; :func:`load_pretokenized_dataset` sets that format so the ids stay int16 until the collator makes them long.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields

import datasets
import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm
from transformers import AutoModel
from transformers.utils import logging

from ..models import PrologueARConfig, PrologueTokenizerConfig, PrologueTokenizerModel
from .data import ImageTransform, load_image_dataset, prepare_image_dataset, to_rgb

logger = logging.get_logger(__name__)

PRETOKENIZED_INFO_FILE = "prologue_pretokenized.json"
PRETOKENIZED_FORMAT = "prologue-pretokenized"
PRETOKENIZED_FORMAT_VERSION = 1
SHARDS_DIR = "_shards"
CROP_POSITIONS = {"five": ("top_left", "top_right", "bottom_left", "bottom_right", "center"), "center": ("center",)}
# Config keys that do not change what the tokenizer computes (bookkeeping written by transformers / the Hub).
_VOLATILE_CONFIG_KEYS = {
    "transformers_version",
    "_name_or_path",
    "architectures",
    "dtype",
    "torch_dtype",
    "_commit_hash",
    "_attn_implementation_autoset",
    "auto_map",
    # Prologue-Post: where the frozen tokenizer was loaded from is bookkeeping (its weights are hashed below).
    "visual_tokenizer_name_or_path",
    "visual_tokenizer_subfolder",
}


# --------------------------------------------------------------------------------------------- identity
def tokenizer_config_hash(config: PrologueTokenizerConfig) -> str:
    """SHA-256 (hex) of the tokenizer config's JSON, bookkeeping keys (versions, paths, dtype) left out."""
    values = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def tokenizer_identity(tokenizer: PrologueTokenizerModel) -> str:
    """A string that names exactly which tokenizer produced a set of ids: ``"sha256:<32 hex>"`` over the config hash
    and every tensor of the state dict (name, dtype, shape, bytes).

    The weights take part because a trained and an untrained tokenizer share their config; the AR must be trained on
    ids from the very tokenizer that later decodes its samples. The hash is of the weights as held (a tokenizer cast to
    bf16 is a different tokenizer).

    >>> from prologue_hf.testing import tiny_tokenizer
    >>> tokenizer_identity(tiny_tokenizer(seed=0)) == tokenizer_identity(tiny_tokenizer(seed=0))
    True
    >>> tokenizer_identity(tiny_tokenizer(seed=0)) == tokenizer_identity(tiny_tokenizer(seed=1))
    False
    """
    digest = hashlib.sha256(tokenizer_config_hash(tokenizer.config).encode())
    for name, tensor in sorted(tokenizer.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:32]


def ids_dtype(codebook_size: int) -> str:
    """Smallest signed integer dtype (``"int16"`` or ``"int32"``) that holds ids in ``[0, codebook_size)``.

    Signed because torch has no general uint16 support; int16 holds the paper's 16K visual and 1K prologue codebooks.
    """
    return "int16" if codebook_size <= np.iinfo(np.int16).max + 1 else "int32"


# --------------------------------------------------------------------------------------------- metadata
@dataclass
class PretokenizedInfo:
    """What a pretokenized dataset was made from; stored with the dataset and checked by stage-2 training.

    Args:
        tokenizer_identity: :func:`tokenizer_identity` of the tokenizer that produced the ids.
        tokenizer_config_hash: :func:`tokenizer_config_hash` of its config.
        tokenizer_name_or_path: where the tokenizer was loaded from (informational; moving it does not matter).
        visual_vocab_size, prologue_vocab_size, num_prologue_tokens, num_visual_tokens: the tokenizer's vocabulary.
        image_size: side of the tokenized crops.
        num_classes: real classes of the labels (``None`` if the source gave no class names and no labels).
        class_names: names of the classes when the source had a ``ClassLabel``.
        crops, hflip, crop_range: the view settings (see :class:`TenCropViews`).
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
        return cls(
            tokenizer_identity=identity or tokenizer_identity(tokenizer),
            tokenizer_config_hash=tokenizer_config_hash(config),
            tokenizer_name_or_path=name_or_path if name_or_path is not None else (config.name_or_path or None),
            visual_vocab_size=config.visual_codebook_size,
            prologue_vocab_size=config.prologue_codebook_size if config.num_prologue_tokens else 0,
            num_prologue_tokens=config.num_prologue_tokens,
            num_visual_tokens=config.num_visual_tokens,
            image_size=config.image_size,
            ids_dtype=ids_dtype(max(config.visual_codebook_size, config.prologue_codebook_size)),
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
        """Raise ``ValueError`` unless the AR ``config`` can be trained on these ids: same vocabulary (V, P, K, N),
        enough classes, and (when the config names one) the same tokenizer identity."""
        pairs = {
            "visual_vocab_size": (config.visual_vocab_size, self.visual_vocab_size),
            "num_prologue_tokens": (config.num_prologue_tokens, self.num_prologue_tokens),
            "num_visual_tokens": (config.num_visual_tokens, self.num_visual_tokens),
        }
        if self.num_prologue_tokens:
            pairs["prologue_vocab_size"] = (config.prologue_vocab_size, self.prologue_vocab_size)
        mismatched = {k: v for k, v in pairs.items() if v[0] != v[1]}
        if mismatched:
            detail = "; ".join(f"{k}: AR config {a} vs dataset tokenizer {d}" for k, (a, d) in mismatched.items())
            raise ValueError(
                f"the AR config's vocabulary does not match the pretokenized dataset's tokenizer "
                f"{self.tokenizer_identity} ({detail})"
            )
        if self.num_classes is not None and config.num_classes < self.num_classes:
            raise ValueError(
                f"the AR config has num_classes={config.num_classes} but the dataset's labels have {self.num_classes} classes"
            )
        if config.tokenizer_identity is not None and config.tokenizer_identity != self.tokenizer_identity:
            raise ValueError(
                f"tokenizer identity mismatch: the AR config was made for {config.tokenizer_identity}, the dataset was "
                f"tokenized by {self.tokenizer_identity} ({self.tokenizer_name_or_path or 'unknown path'})"
            )

    def ar_config_kwargs(self, num_classes: int | None = None) -> dict:
        """The vocabulary fields (and tokenizer identity) of a matching :class:`PrologueARConfig`; ``num_classes``
        defaults to the dataset's."""
        num_classes = self.num_classes if num_classes is None else num_classes
        if num_classes is None:
            raise ValueError("the dataset records no num_classes; pass num_classes explicitly")
        return dict(
            visual_vocab_size=self.visual_vocab_size,
            prologue_vocab_size=self.prologue_vocab_size if self.num_prologue_tokens else 1,
            num_prologue_tokens=self.num_prologue_tokens,
            num_visual_tokens=self.num_visual_tokens,
            num_classes=num_classes,
            tokenizer_identity=self.tokenizer_identity,
        )


# --------------------------------------------------------------------------------------------- views
@dataclass(frozen=True)
class TenCropViews:
    """Deterministic views of one image: ``crops`` positions (``"five"``: four corners + centre, ``"center"``) of an
    ``image_size`` crop inside the ``round(image_size * crop_range)`` centre square, each also mirrored when ``hflip``.

    The square comes from :class:`~prologue_hf.training.data.ImageTransform` (short side resized, centre crop, no
    randomness). The default (``"five"``, ``hflip=True``, ``crop_range=1.1``) is the paper's ten-crop. View ``v`` has
    ``crop_index = v``: the positions first (TL, TR, BL, BR, C), then the same positions mirrored.

    >>> views = TenCropViews(32)
    >>> views(PIL.Image.new("RGB", (48, 40))).shape
    torch.Size([10, 3, 32, 32])
    """

    image_size: int
    crop_range: float = 1.1
    crops: str = "five"
    hflip: bool = True

    def __post_init__(self):
        if self.crops not in CROP_POSITIONS:
            raise ValueError(f"crops must be one of {sorted(CROP_POSITIONS)}, got {self.crops!r}")
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {self.image_size!r}")
        if not self.crop_range >= 1.0:
            raise ValueError(f"crop_range must be >= 1.0 (the square the crops are taken from), got {self.crop_range}")

    @property
    def num_positions(self) -> int:
        return len(CROP_POSITIONS[self.crops])

    @property
    def num_views(self) -> int:
        return self.num_positions * (2 if self.hflip else 1)

    @property
    def square_size(self) -> int:
        return round(self.image_size * self.crop_range)

    def offsets(self) -> list[tuple[int, int]]:
        """``(top, left)`` of each crop position inside the square (torchvision ``FiveCrop`` order)."""
        far = self.square_size - self.image_size
        centre = int(round(far / 2.0))
        corners = {
            "top_left": (0, 0),
            "top_right": (0, far),
            "bottom_left": (far, 0),
            "bottom_right": (far, far),
            "center": (centre, centre),
        }
        return [corners[name] for name in CROP_POSITIONS[self.crops]]

    def __call__(self, image: PIL.Image.Image) -> torch.Tensor:
        """An RGB PIL image -> ``pixel_values`` views ``[num_views, 3, image_size, image_size]`` in ``[-1, 1]``."""
        square = ImageTransform(self.square_size, random_crop=False, hflip=False)(image)  # [3, L, L]
        size = self.image_size
        crops = [square[:, top : top + size, left : left + size] for top, left in self.offsets()]
        if self.hflip:
            crops += [crop.flip(-1) for crop in crops]
        return torch.stack(crops)


# --------------------------------------------------------------------------------------------- the run
@dataclass
class PretokenizeConfig:
    """Settings of :func:`pretokenize_dataset` (also the CLI of ``examples/pretokenize.py``).

    Args:
        output_dir: where the merged dataset is saved (``save_to_disk``); shards go to ``<output_dir>/_shards``.
        crops, hflip, crop_range: view settings (:class:`TenCropViews`); defaults are the paper's ten-crop.
        batch_size: source images per encoder batch (each gives ``num_views`` rows).
        shard_size: source images per resumable shard.
        num_workers: DataLoader workers decoding and cropping images (map-style datasets).
        keep_shards: keep ``_shards`` after merging (default: delete them once the merged dataset is saved).
        overwrite: start over when ``output_dir`` already holds a finished dataset or shards of other settings.
        max_images: tokenize only the first ``max_images`` source images (smoke tests, benchmarks).
    """

    output_dir: str = field(metadata={"help": "Folder of the output dataset (save_to_disk)."})
    crops: str = field(default="five", metadata={"help": "'five' (4 corners + centre) or 'center'."})
    hflip: bool = field(default=True, metadata={"help": "Also tokenize the mirrored views (ten-crop = five + hflip)."})
    crop_range: float = field(default=1.1, metadata={"help": "Square side / image_size the crops are taken from."})
    batch_size: int = field(default=64, metadata={"help": "Source images per encoder batch."})
    shard_size: int = field(default=10_000, metadata={"help": "Source images per resumable shard."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers decoding images."})
    keep_shards: bool = field(default=False, metadata={"help": "Keep _shards after the merge."})
    overwrite: bool = field(default=False, metadata={"help": "Discard an existing output / shards."})
    max_images: int | None = field(default=None, metadata={"help": "Only the first N source images."})

    def __post_init__(self):
        for name in ("batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be >= 1 or None, got {self.max_images}")

    def views(self, image_size: int) -> TenCropViews:
        return TenCropViews(image_size, crop_range=self.crop_range, crops=self.crops, hflip=self.hflip)


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


class _ViewsDataset(torch.utils.data.Dataset):
    """Rows ``[start, stop)`` of a map-style image dataset -> ``(views [V,3,S,S] | None, label, index)``."""

    def __init__(self, dataset: datasets.Dataset, start: int, stop: int, views: TenCropViews):
        self.dataset, self.start, self.stop, self.views = dataset, start, stop, views

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        index = self.start + i
        example = self.dataset[index]
        return _example_views(example, index, self.views)


def _example_views(example: dict, index: int, views: TenCropViews):
    """One source example -> ``(views | None, label, index)``; ``None`` marks an undecodable image."""
    image = to_rgb(example["image"])
    if image is None:
        source = example["image"]
        where = source.get("path") if isinstance(source, dict) else None
        logger.warning(f"image {index}{f' ({where})' if where else ''} could not be decoded; skipped")
        return None, -1, index
    label = example["label"]
    return views(image), -1 if label is None else int(label), index


def _collate_views(items):
    """Keep decodable images: ``(views [B*V,3,S,S], labels [B], indices [B], skipped)``."""
    kept = [item for item in items if item[0] is not None]
    skipped = len(items) - len(kept)
    if not kept:
        return None, None, None, skipped
    views = torch.cat([item[0] for item in kept])
    labels = torch.tensor([item[1] for item in kept], dtype=torch.long)
    indices = torch.tensor([item[2] for item in kept], dtype=torch.long)
    return views, labels, indices, skipped


def _iter_stream_batches(examples: list[tuple[int, dict]], views: TenCropViews, batch_size: int):
    """Streaming counterpart of the DataLoader: ``_collate_views`` batches from ``(index, example)`` pairs."""
    for start in range(0, len(examples), batch_size):
        yield _collate_views([_example_views(example, index, views) for index, example in examples[start : start + batch_size]])


@torch.no_grad()
def encode_views(tokenizer: PrologueTokenizerModel, views: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``pixel_values`` views ``[B, 3, S, S]`` in ``[-1, 1]`` -> ``(prologue_ids [B, K] | None, visual_ids [B, N])``
    on the CPU."""
    encoded = tokenizer.encode(views.to(tokenizer.device, tokenizer.dtype))
    prologue = encoded.prologue_ids.cpu() if encoded.prologue_ids is not None else None
    return prologue, encoded.visual_ids.cpu()


def _encode_batches(tokenizer, batches, info: PretokenizedInfo, views: TenCropViews, progress) -> tuple[dict, int]:
    """Run the tokenizer over ``batches``; returns the shard's columns (numpy) and the number of skipped images."""
    dtype = np.dtype(info.ids_dtype)
    columns = {
        "prologue_ids": [np.zeros((0, info.num_prologue_tokens), dtype)],
        "visual_ids": [np.zeros((0, info.num_visual_tokens), dtype)],
        "label": [np.zeros(0, np.int64)],
        "crop_index": [np.zeros(0, np.int8)],
        "image_index": [np.zeros(0, np.int64)],
    }
    skipped = 0
    for pixels, labels, indices, batch_skipped in batches:
        skipped += batch_skipped
        progress.update(batch_skipped)
        if pixels is None:
            continue
        prologue, visual = encode_views(tokenizer, pixels)
        if prologue is None:
            prologue = torch.zeros(visual.shape[0], 0, dtype=torch.long)
        columns["prologue_ids"].append(prologue.numpy().astype(dtype))
        columns["visual_ids"].append(visual.numpy().astype(dtype))
        columns["label"].append(labels.repeat_interleave(views.num_views).numpy())
        columns["crop_index"].append(np.tile(np.arange(views.num_views, dtype=np.int8), labels.shape[0]))
        columns["image_index"].append(indices.repeat_interleave(views.num_views).numpy())
        progress.update(labels.shape[0])
    return {name: np.concatenate(parts) for name, parts in columns.items()}, skipped


def _write_shard(columns: dict, features: datasets.Features, shards_dir: str, name: str, images: int, skipped: int) -> None:
    """Save one shard atomically (a temporary folder renamed when complete, so a killed run leaves no half shard)."""
    final = os.path.join(shards_dir, name)
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    table = {name: list(values) if values.ndim == 2 else values for name, values in columns.items()}
    datasets.Dataset.from_dict(table, features=features).save_to_disk(tmp)
    with open(os.path.join(tmp, "shard_stats.json"), "w") as handle:
        json.dump({"num_images": images, "num_skipped": skipped}, handle)
    os.replace(tmp, final)


def _run_manifest(info: PretokenizedInfo, config: PretokenizeConfig, streaming: bool, num_processes: int) -> dict:
    """Everything that must not change between a run and its resumption."""
    manifest = {
        "tokenizer_identity": info.tokenizer_identity,
        "crops": config.crops,
        "hflip": config.hflip,
        "crop_range": config.crop_range,
        "shard_size": config.shard_size,
        "source": info.source,
        "split": info.split,
        "max_images": config.max_images,
        "streaming": streaming,
    }
    if streaming:  # stream shards are per process: resuming needs the same number of processes
        manifest["num_processes"] = num_processes
    return manifest


def pretokenize_dataset(
    tokenizer: PrologueTokenizerModel,
    dataset: datasets.Dataset | datasets.IterableDataset,
    config: PretokenizeConfig,
    tokenizer_name_or_path: str | None = None,
    source: str | None = None,
    split: str | None = None,
    process_index: int | None = None,
    num_processes: int | None = None,
    identity: str | None = None,
) -> datasets.Dataset | None:
    """Tokenize every image of ``dataset`` into ``config.output_dir`` (one row per view; module docstring).

    Args:
        tokenizer: the frozen tokenizer; its device and dtype are used (it is put in eval mode).
        dataset: map-style or streaming dataset with ``image`` and ``label`` columns, as returned by
            :func:`~prologue_hf.training.data.load_image_dataset`. Undecodable images are skipped and counted.
        config: :class:`PretokenizeConfig`.
        tokenizer_name_or_path, source, split: recorded in :class:`PretokenizedInfo`.
        process_index, num_processes: this process's slice. Default: ``accelerate.PartialState`` (all processes
            synchronise and the main one merges). Given explicitly, no process synchronisation happens and process 0
            merges as soon as every shard exists (used to run slices one after another).
        identity: the tokenizer's :func:`tokenizer_identity` when it was computed before a dtype cast (default:
            computed from ``tokenizer``).

    Returns:
        The merged dataset on the merging process (formatted as by :func:`load_pretokenized_dataset`), else ``None``.

    >>> from prologue_hf.testing import tiny_tokenizer
    >>> images = load_image_dataset("path/to/imagefolder")  # doctest: +SKIP
    >>> ds = pretokenize_dataset(tiny_tokenizer(), images, PretokenizeConfig("out"))  # doctest: +SKIP
    >>> ds.features["visual_ids"]  # doctest: +SKIP
    List(Value('int16'), length=16)
    """
    from accelerate import PartialState

    explicit = process_index is not None or num_processes is not None
    state = None if explicit else PartialState()
    rank = (process_index or 0) if explicit else state.process_index
    world = (num_processes or 1) if explicit else state.num_processes
    if not 0 <= rank < world:
        raise ValueError(f"process_index must lie in [0, num_processes={world}), got {rank}")
    names = dataset.column_names or (list(dataset.features) if dataset.features is not None else [])
    for column in ("image", "label"):
        if column not in names:
            raise ValueError(f"dataset must have an '{column}' column (see load_image_dataset); got {names}")
    tokenizer.eval()
    streaming = isinstance(dataset, datasets.IterableDataset)
    views = config.views(tokenizer.config.image_size)
    label_feature = dataset.features["label"] if dataset.features is not None else None
    class_names = list(label_feature.names) if isinstance(label_feature, datasets.ClassLabel) else None
    info = PretokenizedInfo.from_tokenizer(
        tokenizer,
        tokenizer_name_or_path,
        identity=identity,
        num_classes=len(class_names) if class_names else None,
        class_names=class_names,
        crops=config.crops,
        hflip=config.hflip,
        crop_range=config.crop_range,
        source=source,
        split=split,
    )
    features = output_features(info, label_feature)
    dataset = prepare_image_dataset(dataset)  # decode with to_rgb: a corrupt file is skipped, not fatal

    # 0. an existing finished dataset, or shards of a previous run with the same settings
    output_dir, shards_dir = config.output_dir, os.path.join(config.output_dir, SHARDS_DIR)
    manifest_path = os.path.join(shards_dir, "manifest.json")
    manifest = _run_manifest(info, config, streaming, world)
    finished = not config.overwrite and os.path.exists(os.path.join(output_dir, PRETOKENIZED_INFO_FILE))
    if rank == 0:
        if config.overwrite:
            shutil.rmtree(output_dir, ignore_errors=True)
        if not finished:
            os.makedirs(shards_dir, exist_ok=True)
            if not os.path.exists(manifest_path):
                with open(manifest_path, "w") as handle:
                    json.dump(manifest, handle, indent=2)
    if state is not None:
        state.wait_for_everyone()
    if finished:
        existing = load_pretokenized_dataset(output_dir)
        previous = PretokenizedInfo.from_dataset(existing)
        same = (previous.tokenizer_identity, previous.crops, previous.hflip, previous.crop_range) == (
            info.tokenizer_identity,
            info.crops,
            info.hflip,
            info.crop_range,
        )
        if not same or (previous.source, previous.split) != (info.source, info.split):
            raise ValueError(f"{output_dir} already holds a pretokenized dataset of other settings; pass overwrite=True")
        logger.info(f"{output_dir} is already complete ({len(existing)} rows); nothing to do")
        return existing if rank == 0 else None
    with open(manifest_path) as handle:
        previous = json.load(handle)
    if previous != manifest:
        changed = sorted(k for k in set(previous) | set(manifest) if previous.get(k) != manifest.get(k))
        raise ValueError(
            f"{shards_dir} holds shards written with other settings ({', '.join(changed)} differ); "
            "use another output_dir or overwrite=True"
        )

    # 1. this process's shards
    run = _run_stream_shards if streaming else _run_map_shards
    run(tokenizer, dataset, config, info, views, features, shards_dir, rank, world)
    # 2. the merge, once every shard exists
    if state is not None:
        state.wait_for_everyone()
    merged = _merge_shards(output_dir, shards_dir, info, config, features, streaming, world, dataset) if rank == 0 else None
    if state is not None:
        state.wait_for_everyone()
    return merged


def _map_shards(dataset: datasets.Dataset, config: PretokenizeConfig) -> list[tuple[str, int, int]]:
    """``(name, start, stop)`` of every shard; boundaries depend on ``shard_size`` only, not on the processes."""
    total = len(dataset) if config.max_images is None else min(len(dataset), config.max_images)
    count = math.ceil(total / config.shard_size)
    return [
        (f"shard-{i:06d}-of-{count:06d}", i * config.shard_size, min(total, (i + 1) * config.shard_size))
        for i in range(count)
    ]


def _run_map_shards(tokenizer, dataset, config, info, views, features, shards_dir, rank, world) -> None:
    mine = [entry for i, entry in enumerate(_map_shards(dataset, config)) if i % world == rank]
    todo = [entry for entry in mine if not os.path.isdir(os.path.join(shards_dir, entry[0]))]
    if len(todo) < len(mine):
        logger.info(f"process {rank}: {len(mine) - len(todo)} of {len(mine)} shards already written; skipped")
    total = sum(stop - start for _, start, stop in todo)
    start_time = time.perf_counter()
    with tqdm(total=total, desc=f"pretokenize [{rank + 1}/{world}]", unit="img", position=rank) as progress:
        for name, start, stop in todo:
            loader = torch.utils.data.DataLoader(
                _ViewsDataset(dataset, start, stop, views),
                batch_size=config.batch_size,
                num_workers=config.num_workers,
                collate_fn=_collate_views,
            )
            columns, skipped = _encode_batches(tokenizer, loader, info, views, progress)
            _write_shard(columns, features, shards_dir, name, stop - start, skipped)
            progress.set_postfix(images_per_s=f"{progress.n / max(time.perf_counter() - start_time, 1e-9):.1f}")
    _log_speed(rank, total, start_time)


def _run_stream_shards(tokenizer, dataset, config, info, views, features, shards_dir, rank, world) -> None:
    """Streaming: the stream is split between processes (``split_dataset_by_node``) and each process cuts its part
    into shards in stream order. ``image_index`` is ``rank + world * position`` (unique, not a source row)."""
    from datasets.distributed import split_dataset_by_node

    stream = split_dataset_by_node(dataset, rank=rank, world_size=world) if world > 1 else dataset
    limit = None if config.max_images is None else len(range(rank, config.max_images, world))
    start_time = time.perf_counter()
    names, position, encoded = [], 0, 0
    iterator = iter(stream)
    with tqdm(total=limit, desc=f"pretokenize stream [{rank + 1}/{world}]", unit="img", position=rank) as progress:
        while limit is None or position < limit:
            size = config.shard_size if limit is None else min(config.shard_size, limit - position)
            name = f"stream-p{rank:03d}-of-{world:03d}-{len(names):06d}"
            done = os.path.isdir(os.path.join(shards_dir, name))
            chunk = []
            for example in iterator:  # a finished shard's examples are read (bytes only) but not decoded
                chunk.append((rank + world * (position + len(chunk)), None if done else example))
                if len(chunk) == size:
                    break
            if not chunk:
                break
            names.append(name)
            if done:
                progress.update(len(chunk))
            else:
                columns, skipped = _encode_batches(
                    tokenizer, _iter_stream_batches(chunk, views, config.batch_size), info, views, progress
                )
                _write_shard(columns, features, shards_dir, name, len(chunk), skipped)
                encoded += len(chunk)
            position += len(chunk)
            progress.set_postfix(images_per_s=f"{encoded / max(time.perf_counter() - start_time, 1e-9):.1f}")
            if len(chunk) < size:
                break
    with open(os.path.join(shards_dir, f"stream-p{rank:03d}-of-{world:03d}.complete.json"), "w") as handle:
        json.dump({"shards": names}, handle)
    _log_speed(rank, encoded, start_time)


def _log_speed(rank: int, images: int, start_time: float) -> None:
    elapsed = time.perf_counter() - start_time
    if images:
        logger.info(f"process {rank}: tokenized {images} images in {elapsed:.1f}s ({images / elapsed:.2f} images/s)")


def _merge_shards(output_dir, shards_dir, info, config, features, streaming, world, dataset) -> datasets.Dataset | None:
    """Concatenate the shards (in source order) into ``output_dir`` once every one exists, else return ``None``."""
    if streaming:
        names = []
        for rank in range(world):
            marker = os.path.join(shards_dir, f"stream-p{rank:03d}-of-{world:03d}.complete.json")
            if not os.path.exists(marker):
                logger.info(f"process {rank}'s stream shards are not complete yet; not merging")
                return None
            with open(marker) as handle:
                names += json.load(handle)["shards"]
    else:
        names = [name for name, _, _ in _map_shards(dataset, config)]
        missing = [name for name in names if not os.path.isdir(os.path.join(shards_dir, name))]
        if missing:
            logger.info(f"{len(missing)} of {len(names)} shards are not written yet; not merging")
            return None
    parts, images, skipped = [], 0, 0
    for name in names:
        path = os.path.join(shards_dir, name)
        parts.append(datasets.load_from_disk(path))
        with open(os.path.join(path, "shard_stats.json")) as handle:
            stats = json.load(handle)
        images += stats["num_images"] - stats["num_skipped"]
        skipped += stats["num_skipped"]
    if not parts:
        raise ValueError("the source dataset is empty: nothing to pretokenize")
    merged = datasets.concatenate_datasets(parts)
    if streaming and world > 1:  # restore one global order: by image, then view
        merged = merged.sort(["image_index", "crop_index"])
    info.num_images, info.num_skipped = images, skipped
    if info.num_classes is None and len(merged):
        info.num_classes = int(np.max(merged.with_format("numpy", columns=["label"])["label"])) + 1
    merged.info.description = info.to_json()
    # write beside _shards through a temporary folder; the info file is written last and marks completion
    tmp = os.path.join(output_dir, "_merging")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_to_disk(tmp)
    for entry in os.listdir(tmp):
        os.replace(os.path.join(tmp, entry), os.path.join(output_dir, entry))
    shutil.rmtree(tmp, ignore_errors=True)
    with open(os.path.join(output_dir, PRETOKENIZED_INFO_FILE), "w") as handle:
        handle.write(info.to_json())
    if not config.keep_shards:
        shutil.rmtree(shards_dir, ignore_errors=True)
    logger.info(f"pretokenized dataset: {len(merged)} rows from {images} images ({skipped} skipped) -> {output_dir}")
    return load_pretokenized_dataset(output_dir)


# --------------------------------------------------------------------------------------------- CLI wiring
@dataclass
class PretokenizeScriptArguments:
    """Source, tokenizer and Hub options of ``examples/pretokenize.py`` (the run options are :class:`PretokenizeConfig`)."""

    dataset_name_or_path: str = field(
        default=None, metadata={"help": "Image folder, save_to_disk folder or Hub dataset (e.g. ILSVRC/imagenet-1k)."}
    )
    tokenizer_name_or_path: str = field(default=None, metadata={"help": "The frozen PrologueTokenizerModel."})
    split: str = field(default="train", metadata={"help": "Source split."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: detected)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: detected)."})
    streaming: bool = field(default=False, metadata={"help": "Stream the source (no full download)."})
    tokenizer_dtype: str = field(default="float32", metadata={"help": "float32 or bfloat16 tokenizer weights."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub dataset repo id to push the result to."})

    def __post_init__(self):
        for name in ("dataset_name_or_path", "tokenizer_name_or_path"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required")
        if self.tokenizer_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"tokenizer_dtype must be 'float32' or 'bfloat16', got {self.tokenizer_dtype!r}")


def run_pretokenize(args: PretokenizeScriptArguments, config: PretokenizeConfig) -> datasets.Dataset | None:
    """Load the tokenizer and the source, pretokenize on this process's slice, merge, optionally push.

    The tokenizer identity is computed from the float32 weights as loaded, before any cast to ``tokenizer_dtype``.
    """
    from accelerate import PartialState

    state = PartialState()
    tokenizer = AutoModel.from_pretrained(args.tokenizer_name_or_path)  # a Prologue or a Prologue-Post tokenizer
    identity = tokenizer_identity(tokenizer)  # of the weights as saved, whatever dtype they then run in
    with state.main_process_first():  # one process downloads / prepares, the others read the cache
        images = load_image_dataset(
            args.dataset_name_or_path, args.split, args.image_column, args.label_column, streaming=args.streaming
        )
    tokenizer = tokenizer.to(state.device, getattr(torch, args.tokenizer_dtype))
    result = pretokenize_dataset(
        tokenizer,
        images,
        config,
        tokenizer_name_or_path=args.tokenizer_name_or_path,
        source=args.dataset_name_or_path,
        split=args.split,
        identity=identity,
    )
    if result is not None and args.push_to_hub:
        push_pretokenized_to_hub(result, args.push_to_hub)
    return result


# --------------------------------------------------------------------------------------------- loading
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


def push_pretokenized_to_hub(dataset: datasets.Dataset, repo_id: str, private: bool | None = None, **kwargs) -> None:
    """``dataset.push_to_hub`` plus the :class:`PretokenizedInfo` json (the Hub card does not keep the description)."""
    from huggingface_hub import HfApi

    info = PretokenizedInfo.from_dataset(dataset)
    if info is None:
        raise ValueError("dataset carries no PretokenizedInfo; load it with load_pretokenized_dataset")
    dataset.push_to_hub(repo_id, private=private, **kwargs)
    HfApi().upload_file(
        path_or_fileobj=info.to_json().encode(),
        path_in_repo=PRETOKENIZED_INFO_FILE,
        repo_id=repo_id,
        repo_type="dataset",
    )


__all__ = [
    "PretokenizeConfig",
    "PretokenizeScriptArguments",
    "run_pretokenize",
    "PretokenizedInfo",
    "TenCropViews",
    "encode_views",
    "load_pretokenized_dataset",
    "output_features",
    "pretokenize_dataset",
    "push_pretokenized_to_hub",
    "tokenizer_config_hash",
    "tokenizer_identity",
    "ids_dtype",
]
