"""Embedded default data: a Fashion-MNIST subset (MIT licence, see LICENSE-fashion-mnist.txt) as an HF dataset.

The demo and the CPU mini-replication load it through the same `datasets` path as ImageNet runs: an ``image``
column (``datasets.Image``) and a ``label`` column (``datasets.ClassLabel``).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import datasets
import numpy as np
import PIL.Image

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
EMBEDDED_SUBSET = Path(__file__).with_name("fashion_mnist_subset.npz")
# Debian's `dataset-fashion-mnist` package installs the full 60k/10k idx files here.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path) as handle:
        return np.frombuffer(handle.read(), np.uint8, offset=offset)


def _load_arrays(split: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    if source == "embedded":
        with np.load(EMBEDDED_SUBSET) as archive:
            return archive[f"{split}_images"], archive[f"{split}_labels"]
    if source == "system":
        prefix = "train" if split == "train" else "t10k"
        images = _read_idx(SYSTEM_FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        labels = _read_idx(SYSTEM_FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz", 8)
        return images, labels
    raise ValueError(f"source must be 'embedded' or 'system', got {source!r}")


def load_fashion_mnist(
    split: str = "train",
    image_size: int = 32,
    source: str = "embedded",
    max_per_class: int | None = None,
) -> datasets.Dataset:
    """Fashion-MNIST as an HF dataset with RGB ``image`` and ``ClassLabel`` ``label`` columns.

    Args:
        split: ``"train"`` or ``"test"``.
        image_size: output side; 28px digits are zero-padded (the background is black) to ``image_size`` >= 28,
            so pixels are kept exactly (32 = a 4x4 grid of 8px patches).
        source: ``"embedded"`` (1000 train / 300 test images per class shipped with the package) or ``"system"``
            (the full 60k / 10k from Debian's ``dataset-fashion-mnist`` under /usr/share/datasets/fashion-mnist).
        max_per_class: keep at most this many images of each class (in file order).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if image_size < 28:
        raise ValueError(f"image_size must be >= 28 (images are padded, not resized), got {image_size}")
    images, labels = _load_arrays(split, source)
    if max_per_class is not None:
        keep = np.concatenate([np.nonzero(labels == c)[0][:max_per_class] for c in range(10)])
        keep.sort()
        images, labels = images[keep], labels[keep]
    pad_before = (image_size - 28) // 2
    pad_after = image_size - 28 - pad_before
    padded = np.pad(images, ((0, 0), (pad_before, pad_after), (pad_before, pad_after)))
    rgb = np.repeat(padded[..., None], 3, axis=-1)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=FASHION_MNIST_CLASSES)})
    return datasets.Dataset.from_dict(
        {"image": [PIL.Image.fromarray(img) for img in rgb], "label": labels.astype(np.int64).tolist()},
        features=features,
    )


__all__ = ["load_fashion_mnist", "FASHION_MNIST_CLASSES"]
