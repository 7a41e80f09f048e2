"""Image data for Prologue training: HF ``datasets`` loading, RGB conversion, the paper's crops, a robust collator.

Sources :func:`load_image_dataset` understands (one call, columns standardised to ``image`` / ``label``):

* a local folder of images (``imagefolder``: class sub-folders give the labels),
* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``,
* a Hub dataset name, e.g. ``"ILSVRC/imagenet-1k"``. ImageNet on the Hub is *gated*: accept its terms on the
  dataset page, then run ``huggingface-cli login`` (or ``hf auth login``, or set ``HF_TOKEN``) once before loading.

Images are decoded by :class:`ImageTrainingCollator`, not by ``datasets``, so a corrupt file costs one skipped
sample and a counted warning instead of an exception in the middle of an epoch (see :func:`prepare_image_dataset`).
Pixel values follow :meth:`PrologueTokenizerModel.preprocess`: ``x / 127.5 - 1`` (the official normalisation).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch
from transformers.utils import logging

from ..models.modeling_prologue_tokenizer import PrologueTokenizerModel

logger = logging.get_logger(__name__)

_IMAGE_COLUMN_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp", "picture")
_LABEL_COLUMN_NAMES = ("label", "labels", "cls", "class", "class_id", "target", "fine_label")
# PIL raises all of these on truncated / corrupt / unsupported files.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, TypeError, PIL.Image.DecompressionBombError)


# ----------------------------------------------------------------------------------------------------- loading
def _is_saved_dataset(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json"))


def _pick_column(
    names: Sequence[str], features: datasets.Features | None, wanted: str | None, feature_type: type, candidates
) -> str | None:
    if wanted is not None:
        if wanted not in names:
            raise ValueError(f"column {wanted!r} not found; the dataset has columns {list(names)}")
        return wanted
    if features is not None:
        for name in names:
            if isinstance(features.get(name), feature_type):
                return name
    lowered = {n.lower(): n for n in names}
    for candidate in candidates:
        if candidate in lowered:
            return lowered[candidate]
    return None


def load_image_dataset(
    name_or_path: str,
    split: str = "train",
    image_column: str | None = None,
    label_column: str | None = None,
    streaming: bool = False,
    *,
    allow_missing_label: bool = False,
    **load_kwargs,
) -> datasets.Dataset | datasets.IterableDataset:
    """Load an image dataset and standardise it to the two columns ``image`` (``datasets.Image``) and ``label``.

    Args:
        name_or_path: a local image folder (``imagefolder`` layout), a ``save_to_disk`` folder (or a folder holding
            one per split, ``<name_or_path>/<split>``, as the demo writes), or a Hub dataset name such as ``"ILSVRC/imagenet-1k"`` (gated: accept the terms on the Hub and ``huggingface-cli login``).
        split: split to load (``"train"``, ``"validation"``; Hub / imagefolder also accept slices like
            ``"train[:1%]"``).
        image_column: column holding the images; default: the first ``datasets.Image`` column, else a column named
            like ``image``/``img``/``jpg``/``png``.
        label_column: column holding integer class labels; default: the first ``ClassLabel`` column, else a column
            named like ``label``/``cls``/``class``.
        streaming: return a ``datasets.IterableDataset`` (no full download; for ImageNet-scale sets).
        allow_missing_label: when no label column exists, add ``label = -1`` ("unlabelled"; trainers map it to
            the null class) instead of raising.
        **load_kwargs: forwarded to ``datasets.load_dataset`` (e.g. ``cache_dir``, ``token``, ``revision``).

    Returns:
        A ``datasets.Dataset`` (or ``IterableDataset`` when ``streaming``) with exactly the columns ``image`` and
        ``label``; the image column decodes to PIL images.

    >>> ds = load_image_dataset("path/to/imagefolder")  # doctest: +SKIP
    >>> ds.column_names  # doctest: +SKIP
    ['image', 'label']
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"name_or_path must be a non-empty string, got {name_or_path!r}")
    split_folder = os.path.join(name_or_path, split) if isinstance(split, str) else ""
    if os.path.isdir(name_or_path) and not _is_saved_dataset(name_or_path) and _is_saved_dataset(split_folder):
        name_or_path = split_folder  # one save_to_disk folder per split (what `make demo` writes to demo_out/data)
    if os.path.isdir(name_or_path) and _is_saved_dataset(name_or_path):
        loaded = datasets.load_from_disk(name_or_path)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"split {split!r} not in the saved DatasetDict at {name_or_path}; has {list(loaded)}")
            loaded = loaded[split]
        dataset = loaded.to_iterable_dataset() if streaming else loaded
    elif os.path.isdir(name_or_path):
        dataset = datasets.load_dataset("imagefolder", data_dir=name_or_path, split=split, streaming=streaming, **load_kwargs)
    elif name_or_path.startswith((os.sep, ".", "~")):
        raise ValueError(f"name_or_path {name_or_path!r} looks like a local path but is not a directory")
    else:
        try:
            dataset = datasets.load_dataset(name_or_path, split=split, streaming=streaming, **load_kwargs)
        except Exception as error:  # re-raised with the login hint; the original stays chained
            message = str(error).lower()
            if any(word in message for word in ("gated", "401", "403", "authenticat", "token", "not found")):
                raise RuntimeError(
                    f"could not load {name_or_path!r} from the Hub ({type(error).__name__}: {error}). Gated datasets "
                    "such as ILSVRC/imagenet-1k need you to accept their terms on the dataset page and to log in "
                    "once with `huggingface-cli login` (or set HF_TOKEN). Offline, pass a local folder instead."
                ) from error
            raise
    return _standardise_columns(dataset, image_column, label_column, allow_missing_label)


def _standardise_columns(dataset, image_column, label_column, allow_missing_label):
    features = dataset.features
    names = list(dataset.column_names or (features.keys() if features is not None else []))
    if not names:
        raise ValueError("cannot standardise columns: the dataset does not report its column names")
    image_name = _pick_column(names, features, image_column, datasets.Image, _IMAGE_COLUMN_NAMES)
    if image_name is None:
        raise ValueError(f"no image column found among {names}; pass image_column=")
    label_name = _pick_column(names, features, label_column, datasets.ClassLabel, _LABEL_COLUMN_NAMES)
    if label_name == image_name:
        label_name = None
    dataset = dataset.select_columns([image_name] + ([label_name] if label_name else []))
    if image_name != "image":
        dataset = dataset.rename_column(image_name, "image")
    if label_name is None:
        if not allow_missing_label:
            raise ValueError(
                f"no label column found among {names}; pass label_column= or allow_missing_label=True "
                "(labels become -1, the unconditional class)"
            )
        if isinstance(dataset, datasets.IterableDataset):
            dataset = dataset.map(lambda example: {"label": -1})
        else:
            dataset = dataset.add_column("label", [-1] * len(dataset))
    elif label_name != "label":
        dataset = dataset.rename_column(label_name, "label")
    if dataset.features is not None and not isinstance(dataset.features["image"], datasets.Image):
        dataset = dataset.cast_column("image", datasets.Image())
    return dataset


@dataclass
class ImageDataArguments:
    """Where the training images come from (CLI / YAML arguments of the training examples)."""

    train_data: str = field(metadata={"help": "Image folder, save_to_disk folder or Hub dataset name (e.g. ILSVRC/imagenet-1k)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: auto-detected)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: auto-detected)."})
    allow_missing_label: bool = field(default=False, metadata={"help": "Train on an unlabelled set (labels -1)."})
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset (needs max_steps)."})
    shuffle_buffer_size: int = field(default=10000, metadata={"help": "Shuffle buffer of a streamed dataset."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N samples (debugging)."})
    random_crop: bool = field(default=True, metadata={"help": "Random crop after resizing the shorter side (paper); else centre crop."})
    hflip: bool = field(default=True, metadata={"help": "Random horizontal flip (paper)."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder."})


def load_training_images(data_args: ImageDataArguments, seed: int = 0):
    """:func:`load_image_dataset` + :func:`prepare_image_dataset` as ``data_args`` says (streamed sets are
    shuffled through a buffer seeded with ``seed``). Pair the result with :class:`ImageTrainingCollator`."""
    kwargs = {"cache_dir": data_args.cache_dir} if data_args.cache_dir else {}
    dataset = load_image_dataset(
        data_args.train_data,
        split=data_args.train_split,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        streaming=data_args.streaming,
        allow_missing_label=data_args.allow_missing_label,
        **kwargs,
    )
    if data_args.max_train_samples is not None:
        n = data_args.max_train_samples
        dataset = dataset.take(n) if data_args.streaming else dataset.select(range(min(n, len(dataset))))
    if data_args.streaming:
        dataset = dataset.shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
    return prepare_image_dataset(dataset, add_index=True)


def prepare_image_dataset(dataset: datasets.Dataset | datasets.IterableDataset, add_index: bool = False):
    """Turn off ``datasets``' own image decoding (``Image(decode=False)``) so that :class:`ImageTrainingCollator`
    decodes each image itself and can skip corrupt files. Use the result with that collator.

    ``add_index=True`` (map-style datasets) adds an ``index`` column (the row number); a seeded
    :class:`ImageTrainingCollator` derives each sample's crop / flip from ``(seed, epoch, index)``, so augmentation is
    reproducible, independent of worker count and exactly resumable.
    """
    if "image" not in (dataset.column_names or []):
        raise ValueError(f"dataset must have an 'image' column (see load_image_dataset); got {dataset.column_names}")
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    if add_index and isinstance(dataset, datasets.Dataset) and "index" not in dataset.column_names:
        dataset = dataset.add_column("index", list(range(len(dataset))))
    return dataset


# ----------------------------------------------------------------------------------------------------- images
def to_rgb(image: Any) -> PIL.Image.Image | None:
    """Decode / convert one image to 8-bit RGB, or return ``None`` when it cannot be decoded.

    Accepts a PIL image, raw bytes, a file path, or a ``datasets`` ``{"bytes": ..., "path": ...}`` dict.
    Grey, CMYK, YCbCr, 16-bit and palette images are converted; images with transparency (RGBA, LA, palette with a
    transparent index) are composited onto white so transparent areas do not turn black.
    """
    try:
        if isinstance(image, dict):
            image = image.get("bytes") or image.get("path")
        if isinstance(image, (bytes, bytearray)):
            image = PIL.Image.open(io.BytesIO(image))
        elif isinstance(image, (str, os.PathLike)):
            image = PIL.Image.open(image)
        if not isinstance(image, PIL.Image.Image):
            return None
        image.load()  # force decoding: truncated files fail here, not later in a worker
        mode = image.mode
        if mode == "RGB":
            return image
        if mode == "P" and "transparency" in image.info:
            image, mode = image.convert("RGBA"), "RGBA"
        if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            rgba = image.convert("RGBA")
            background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return PIL.Image.alpha_composite(background, rgba).convert("RGB")
        if mode in ("I", "F") or mode.startswith("I;16"):
            array = np.asarray(image, dtype=np.float64)
            peak = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
            array = np.clip(array / peak * 255.0, 0, 255).round().astype(np.uint8)
            return PIL.Image.fromarray(array).convert("RGB")
        return image.convert("RGB")
    except _DECODE_ERRORS:
        return None


class ImageTransform:
    """PIL image -> float tensor ``[3, image_size, image_size]`` in ``[-1, 1]``.

    Resize the shorter side to ``image_size`` (bicubic, antialiased), then crop ``image_size`` square: a random
    crop when ``random_crop`` (training, paper appendix E "random cropping and horizontal flipping"), else the centre
    crop; flip horizontally with probability 0.5 when ``hflip``. Randomness comes from torch's global generator (or
    ``generator``), which DataLoader workers seed per worker, so runs are reproducible under a fixed seed.

    >>> transform = ImageTransform(32, random_crop=False, hflip=False)
    >>> transform(PIL.Image.new("RGB", (48, 40), (255, 0, 0))).shape
    torch.Size([3, 32, 32])
    """

    def __init__(self, image_size: int, random_crop: bool = True, hflip: bool = True):
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        self.image_size = image_size
        self.random_crop = random_crop
        self.hflip = hflip

    def __repr__(self) -> str:
        return f"ImageTransform(image_size={self.image_size}, random_crop={self.random_crop}, hflip={self.hflip})"

    def __call__(self, image: PIL.Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        if not isinstance(image, PIL.Image.Image):
            raise ValueError(f"image must be a PIL image, got {type(image).__name__}")
        if image.mode != "RGB":
            converted = to_rgb(image)
            if converted is None:
                raise ValueError("image could not be converted to RGB")
            image = converted
        size = self.image_size
        width, height = image.size
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), resample=PIL.Image.Resampling.BICUBIC, reducing_gap=None)
        if self.random_crop:
            left = int(torch.randint(0, new_w - size + 1, (1,), generator=generator))
            top = int(torch.randint(0, new_h - size + 1, (1,), generator=generator))
        else:
            left, top = (new_w - size) // 2, (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
        if self.hflip and bool(torch.rand((), generator=generator) < 0.5):
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        return PrologueTokenizerModel.preprocess(image)[0]  # [3, H, W], x / 127.5 - 1


# ----------------------------------------------------------------------------------------------------- batching
class ImageTrainingCollator:
    """Collate raw ``{"image", "label"}`` examples into ``{"pixel_values" [B,3,H,W], "labels" [B]}``.

    Each image is decoded with :func:`to_rgb` and transformed with ``transform``. Undecodable images are dropped
    from the batch with a warning that carries the running count (``num_skipped``; per DataLoader worker), so a
    corrupt file never stops an epoch. A batch in which *every* image is corrupt raises ``RuntimeError``: that is a
    broken data source, not a stray file. Labels ``None`` become ``-1`` (unlabelled).

    Randomness: with ``seed`` set and an ``index`` in each example (:func:`prepare_image_dataset` with
    ``add_index=True``), each sample's augmentation draws from a generator seeded by ``(seed, epoch, index)``
    (:meth:`set_epoch`; the stage-1 and Prologue-Post trainers call it at every epoch start), so it does not depend
    on worker count, process or resume point. Otherwise ``transform`` uses torch's global generator.

    Args:
        transform: PIL image -> ``[3, H, W]`` tensor, e.g. :class:`ImageTransform` (called as
            ``transform(image, generator=g)`` when seeded).
        image_column, label_column: keys of the examples.
        seed: base seed of the per-sample augmentation (None: global generator).
    """

    def __init__(
        self,
        transform: Callable[..., torch.Tensor],
        image_column: str = "image",
        label_column: str = "label",
        seed: int | None = None,
    ):
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column
        self.seed = seed
        self.epoch = 0
        self.num_skipped = 0
        self.num_seen = 0

    def set_epoch(self, epoch: int) -> None:
        """Epoch number mixed into the per-sample augmentation seeds."""
        self.epoch = int(epoch)

    def _generator(self, example: dict[str, Any]) -> torch.Generator | None:
        if self.seed is None or example.get("index") is None:
            return None
        high, low = np.random.SeedSequence([self.seed, self.epoch, int(example["index"])]).generate_state(2)
        return torch.Generator().manual_seed((int(high) << 32) | int(low))

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pixels, labels = [], []
        for example in examples:
            self.num_seen += 1
            image = to_rgb(example.get(self.image_column))
            if image is None:
                self.num_skipped += 1
                source = example.get(self.image_column)
                where = source.get("path") if isinstance(source, dict) else None
                logger.warning(
                    f"skipped an undecodable image{f' ({where})' if where else ''}; "
                    f"{self.num_skipped} of {self.num_seen} images skipped so far in this process"
                )
                continue
            generator = self._generator(example)
            pixels.append(self.transform(image) if generator is None else self.transform(image, generator=generator))
            label = example.get(self.label_column)
            labels.append(-1 if label is None else int(label))
        if not pixels:
            raise RuntimeError(
                f"every image of a batch of {len(examples)} was undecodable ({self.num_skipped} skipped so far); "
                "check the data source"
            )
        return {"pixel_values": torch.stack(pixels), "labels": torch.tensor(labels, dtype=torch.long)}


__all__ = [
    "ImageDataArguments",
    "load_training_images",
    "load_image_dataset",
    "prepare_image_dataset",
    "to_rgb",
    "ImageTransform",
    "ImageTrainingCollator",
]
