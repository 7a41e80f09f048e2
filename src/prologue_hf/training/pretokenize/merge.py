"""The last step of a pretokenization run: the finished shards become one dataset in the output folder."""

from __future__ import annotations

import json
import os
import shutil

import datasets
import numpy as np
from transformers.utils import logging

from .info import PRETOKENIZED_INFO_FILE, PretokenizedInfo, load_pretokenized_dataset

logger = logging.get_logger(__name__)

SHARD_STATS_FILE = "shard_stats.json"  # beside each shard's arrow files: {"num_images": ..., "num_skipped": ...}


def merge_shards(
    output_dir: str,
    shards_dir: str,
    names: list[str],
    info: PretokenizedInfo,
    keep_shards: bool = False,
    sort_by_image: bool = False,
) -> datasets.Dataset:
    """Concatenate the shards ``names`` (in that order) of ``shards_dir`` into ``output_dir``.

    The image counts of ``info`` are filled from the shards' statistics (and ``num_classes`` from the labels when the
    source named no classes); skipped (undecodable) images are counted and reported, and a shard none of whose images
    could be decoded adds no rows. The arrow files go through a temporary folder; :data:`PRETOKENIZED_INFO_FILE` is
    written last and marks the dataset complete. ``sort_by_image`` restores one global order (by image, then view)
    for stream shards of several processes; ``keep_shards=False`` deletes ``shards_dir`` afterwards.

    Returns:
        the merged dataset, loaded as by :func:`~prologue_hf.training.pretokenize.info.load_pretokenized_dataset`.

    Raises:
        ValueError: no shard holds a row (an empty source, or not one decodable image).
    """
    parts, images, skipped, empty = [], 0, 0, []
    for name in names:
        path = os.path.join(shards_dir, name)
        with open(os.path.join(path, SHARD_STATS_FILE)) as handle:
            stats = json.load(handle)
        images += stats["num_images"] - stats["num_skipped"]
        skipped += stats["num_skipped"]
        if stats["num_images"] == stats["num_skipped"]:
            # every image undecodable: no rows (and, written before empty shards got an arrow file, nothing to load)
            empty.append(name)
            continue
        parts.append(datasets.load_from_disk(path))
    if not parts:
        if skipped:
            raise ValueError(f"all {skipped} source images were undecodable (skipped): nothing to pretokenize")
        raise ValueError("the source dataset is empty: nothing to pretokenize")
    merged = datasets.concatenate_datasets(parts)
    if sort_by_image:  # restore one global order: by image, then view
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
    if not keep_shards:
        shutil.rmtree(shards_dir, ignore_errors=True)
    logger.info(f"pretokenized dataset: {len(merged)} rows from {images} images ({skipped} skipped) -> {output_dir}")
    if skipped:
        where = f"; shards without a decodable image: {', '.join(empty)}" if empty else ""
        logger.warning(f"{skipped} of {images + skipped} source images were undecodable and skipped{where}")
    return load_pretokenized_dataset(output_dir)


__all__ = ["SHARD_STATS_FILE", "merge_shards"]
