"""The paper's "ten-crop" views of a source image (appendix E), and the batches of views the runner encodes.

Every image is resized and centre-cropped to a square of side ``image_size * crop_range`` (1.1, LlamaGen's
``crop_range``), then the four corner crops and the centre crop of side ``image_size`` are taken, each with and
without a horizontal flip (torchvision's ``TenCrop`` layout). Each view becomes one row of the pretokenized dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import PIL.Image
import torch
from transformers.utils import logging

from ..image_data import ImageTransform, to_rgb

logger = logging.get_logger(__name__)

CROP_POSITIONS = {"five": ("top_left", "top_right", "bottom_left", "bottom_right", "center"), "center": ("center",)}


@dataclass(frozen=True)
class TenCropViews:
    """Deterministic views of one image: ``crops`` positions (``"five"``: four corners + centre, ``"center"``) of an
    ``image_size`` crop inside the ``round(image_size * crop_range)`` centre square, each also mirrored when ``hflip``.

    The square comes from :class:`~prologue_hf.training.image_data.ImageTransform` (short side resized, centre crop, no
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


# --------------------------------------------------------------------------------------------- batches of views
class ViewsDataset(torch.utils.data.Dataset):
    """Rows ``[start, stop)`` of a map-style image dataset -> ``(views [V,3,S,S] | None, label, index)``."""

    def __init__(self, dataset: datasets.Dataset, start: int, stop: int, views: TenCropViews):
        self.dataset, self.start, self.stop, self.views = dataset, start, stop, views

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        index = self.start + i
        example = self.dataset[index]
        return example_views(example, index, self.views)


def example_views(example: dict, index: int, views: TenCropViews):
    """One source example -> ``(views | None, label, index)``; ``None`` marks an undecodable image."""
    image = to_rgb(example["image"])
    if image is None:
        source = example["image"]
        where = source.get("path") if isinstance(source, dict) else None
        logger.warning(f"image {index}{f' ({where})' if where else ''} could not be decoded; skipped")
        return None, -1, index
    label = example["label"]
    return views(image), -1 if label is None else int(label), index


def collate_views(items):
    """Keep decodable images: ``(views [B*V,3,S,S], labels [B], indices [B], skipped)``."""
    kept = [item for item in items if item[0] is not None]
    skipped = len(items) - len(kept)
    if not kept:
        return None, None, None, skipped
    views = torch.cat([item[0] for item in kept])
    labels = torch.tensor([item[1] for item in kept], dtype=torch.long)
    indices = torch.tensor([item[2] for item in kept], dtype=torch.long)
    return views, labels, indices, skipped


def iter_stream_batches(examples: list[tuple[int, dict]], views: TenCropViews, batch_size: int):
    """Streaming counterpart of the DataLoader: ``collate_views`` batches from ``(index, example)`` pairs."""
    for start in range(0, len(examples), batch_size):
        yield collate_views([example_views(example, index, views) for index, example in examples[start : start + batch_size]])


__all__ = ["CROP_POSITIONS", "TenCropViews", "ViewsDataset", "collate_views", "example_views", "iter_stream_batches"]
