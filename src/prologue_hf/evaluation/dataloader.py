"""Evaluation images: a deterministic dataloader over an image dataset (center crops, no augmentation)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..training.image_data import (
    ImageTrainingCollator,
    ImageTransform,
    load_image_dataset,
    prepare_image_dataset,
)


def evaluation_dataloader(
    name_or_path: str,
    split: str = "validation",
    image_size: int = 256,
    batch_size: int = 64,
    num_workers: int = 0,
    max_images: int | None = None,
    streaming: bool = False,
    **load_kwargs,
) -> DataLoader:
    """Batches ``{"pixel_values" [B, 3, S, S] in [-1, 1], "labels" [B]}`` of ``name_or_path`` in dataset order.

    Images are resized (shorter side to ``image_size``, bicubic) and center-cropped, the usual ImageNet evaluation
    preprocessing (rFID / PSNR on the 50k validation images, linear-probe features). Sources are those of
    :func:`prologue_hf.training.image_data.load_image_dataset` (image folder, ``save_to_disk`` folder, Hub name).

    Args:
        max_images: keep only the first ``max_images`` images.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset = load_image_dataset(name_or_path, split=split, streaming=streaming, allow_missing_label=True, **load_kwargs)
    if max_images is not None:
        if streaming:
            dataset = dataset.take(max_images)
        else:
            dataset = dataset.select(range(min(max_images, len(dataset))))
    collator = ImageTrainingCollator(ImageTransform(image_size, random_crop=False, hflip=False))
    return DataLoader(
        prepare_image_dataset(dataset),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(0),
    )


def num_batches(loader: DataLoader) -> int | None:
    """``len(loader)`` when known (map-style datasets), else None (streaming)."""
    try:
        return len(loader)
    except TypeError:
        return None


__all__ = ["evaluation_dataloader", "num_batches"]
