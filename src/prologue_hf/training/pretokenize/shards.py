"""The sharded pretokenization run: :func:`pretokenize_dataset` and its :class:`PretokenizeConfig`.

Work is split into *shards* of ``shard_size`` source images, each written to ``<output_dir>/_shards/`` the moment it
is done (through a temporary folder, so a killed run leaves no half shard); a restarted run skips finished shards.
Under ``accelerate launch`` shard ``i`` belongs to process ``i % num_processes`` (for map-style datasets the shard
boundaries do not depend on the number of processes, so a run may resume with a different one); the main process
merges the shards at the end (:func:`~prologue_hf.training.pretokenize.merge.merge_shards`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from ...models import PrologueTokenizerModel
from ...models.packed_linear import packed_linears
from ..image_data import prepare_image_dataset
from .info import PRETOKENIZED_INFO_FILE, PretokenizedInfo, load_pretokenized_dataset, output_features
from .merge import SHARD_STATS_FILE, merge_shards
from .views import TenCropViews, ViewsDataset, collate_views, iter_stream_batches

logger = logging.get_logger(__name__)

SHARDS_DIR = "_shards"
MANIFEST_FILE = "manifest.json"  # in SHARDS_DIR: the settings a resumed run must share (see _run_manifest)


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


@torch.no_grad()
def encode_views(tokenizer: PrologueTokenizerModel, views: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``pixel_values`` views ``[B, 3, S, S]`` in ``[-1, 1]`` -> ``(prologue_ids [B, K] | None, visual_ids [B, N])``
    on the CPU."""
    encoded = tokenizer.encode(views.to(tokenizer.device, tokenizer.dtype))
    prologue = encoded.prologue_ids.cpu() if encoded.prologue_ids is not None else None
    return prologue, encoded.visual_ids.cpu()


# oneDNN's reordered weight takes the row count as a layout hint only (any row count runs on it), while building it
# checks each weight on a probe of that many rows: at a batch's thousands of rows the probe alone cost two encoder
# passes per shard (B encoder: 7.7 CPU s to pack against 3.7 s to encode 10 views), at 64 rows 0.3 s, with the same
# speed-up of the encode itself
PACKED_ROWS_HINT = 64


def _packed_encoder(tokenizer, rows: int = PACKED_ROWS_HINT) -> contextlib.AbstractContextManager:
    """While pretokenizing: a bfloat16 CPU encoder runs its linears on weights reordered once for oneDNN
    (:func:`~prologue_hf.models.packed_linear.packed_linears`: ~10 % less time on the B encoder, with the same ids
    as the plain bf16 product on the 20 views measured, docs/benchmarks.md). float32 gains nothing at pretokenization's thousands of rows (MKL's packed SGEMM times
    like the plain one there) and keeps ``F.linear``; so does any other device."""
    encoder = getattr(tokenizer, "encoder", None)
    if encoder is None or tokenizer.dtype != torch.bfloat16 or tokenizer.device.type != "cpu":
        return contextlib.nullcontext([])
    return packed_linears(encoder, rows)


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
    with contextlib.ExitStack() as stack:
        packed = False
        for pixels, labels, indices, batch_skipped in batches:
            skipped += batch_skipped
            progress.update(batch_skipped)
            if pixels is None:
                continue
            if not packed:  # laid out once per shard
                stack.enter_context(_packed_encoder(tokenizer))
                packed = True
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
    shard = datasets.Dataset.from_dict(table, features=features)
    # an empty dataset is saved without any arrow file unless asked for one, and load_from_disk cannot read that back
    shard.save_to_disk(tmp, num_shards=None if len(shard) else 1)
    with open(os.path.join(tmp, SHARD_STATS_FILE), "w") as handle:
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
    """Tokenize every image of ``dataset`` into ``config.output_dir`` (one row per view; see :mod:`prologue_hf.training.pretokenize`).

    Args:
        tokenizer: the frozen tokenizer; its device and dtype are used (it is put in eval mode).
        dataset: map-style or streaming dataset with ``image`` and ``label`` columns, as returned by
            :func:`~prologue_hf.training.image_data.load_image_dataset`. Undecodable images are skipped and counted.
        config: :class:`PretokenizeConfig`.
        tokenizer_name_or_path, source, split: recorded in :class:`PretokenizedInfo`.
        process_index, num_processes: this process's slice. Default: ``accelerate.PartialState`` (all processes
            synchronise and the main one merges). Given explicitly, no process synchronisation happens and process 0
            merges as soon as every shard exists (used to run slices one after another).
        identity: the tokenizer's :func:`~prologue_hf.identity.tokenizer_identity` when it was computed before a dtype cast (default:
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
    info = _run_info(tokenizer, label_feature, config, tokenizer_name_or_path, identity, source, split)
    features = output_features(info, label_feature)
    dataset = prepare_image_dataset(dataset)  # decode with to_rgb: a corrupt file is skipped, not fatal

    # 0. an existing finished dataset, or shards of a previous run with the same settings
    shards_dir = os.path.join(config.output_dir, SHARDS_DIR)
    manifest = _run_manifest(info, config, streaming, world)
    finished = not config.overwrite and os.path.exists(os.path.join(config.output_dir, PRETOKENIZED_INFO_FILE))
    if rank == 0:
        _prepare_output_dir(config, manifest, create_shards=not finished)
    _wait_for_everyone(state)
    if finished:
        existing = _finished_dataset(config.output_dir, info)
        return existing if rank == 0 else None
    _check_manifest(shards_dir, manifest)
    # 1. this process's shards
    run = _run_stream_shards if streaming else _run_map_shards
    run(tokenizer, dataset, config, info, views, features, shards_dir, rank, world)
    # 2. the merge, once every shard exists
    _wait_for_everyone(state)
    merged = None
    if rank == 0:
        shard_names = _finished_shard_names(shards_dir, dataset, config, streaming, world)
        if shard_names is not None:
            merged = merge_shards(
                config.output_dir, shards_dir, shard_names, info, config.keep_shards, sort_by_image=streaming and world > 1
            )
    _wait_for_everyone(state)
    return merged


def _run_info(tokenizer, label_feature, config: PretokenizeConfig, name_or_path, identity, source, split) -> PretokenizedInfo:
    """The :class:`PretokenizedInfo` of a run (classes from the source's ``ClassLabel``, if it has one)."""
    class_names = list(label_feature.names) if isinstance(label_feature, datasets.ClassLabel) else None
    return PretokenizedInfo.from_tokenizer(
        tokenizer,
        name_or_path,
        identity=identity,
        num_classes=len(class_names) if class_names else None,
        class_names=class_names,
        crops=config.crops,
        hflip=config.hflip,
        crop_range=config.crop_range,
        source=source,
        split=split,
    )


def _wait_for_everyone(state) -> None:
    if state is not None:
        state.wait_for_everyone()


def _prepare_output_dir(config: PretokenizeConfig, manifest: dict, create_shards: bool) -> None:
    """Main process: clear ``output_dir`` on ``overwrite``; create the shards folder and its manifest if new."""
    shards_dir = os.path.join(config.output_dir, SHARDS_DIR)
    if config.overwrite:
        shutil.rmtree(config.output_dir, ignore_errors=True)
    if create_shards:
        os.makedirs(shards_dir, exist_ok=True)
        manifest_path = os.path.join(shards_dir, MANIFEST_FILE)
        if not os.path.exists(manifest_path):
            with open(manifest_path, "w") as handle:
                json.dump(manifest, handle, indent=2)


def _finished_dataset(output_dir: str, info: PretokenizedInfo) -> datasets.Dataset:
    """The complete dataset already in ``output_dir``; ``ValueError`` if it was made with other settings."""
    existing = load_pretokenized_dataset(output_dir)
    previous = PretokenizedInfo.from_dataset(existing)
    settings = ("tokenizer_identity", "crops", "hflip", "crop_range", "source", "split")
    if any(getattr(previous, name) != getattr(info, name) for name in settings):
        raise ValueError(f"{output_dir} already holds a pretokenized dataset of other settings; pass overwrite=True")
    logger.info(f"{output_dir} is already complete ({len(existing)} rows); nothing to do")
    return existing


def _check_manifest(shards_dir: str, manifest: dict) -> None:
    """``ValueError`` unless the shards folder was started with the same settings (see :func:`_run_manifest`)."""
    with open(os.path.join(shards_dir, MANIFEST_FILE)) as handle:
        previous = json.load(handle)
    if previous != manifest:
        changed = sorted(k for k in set(previous) | set(manifest) if previous.get(k) != manifest.get(k))
        raise ValueError(
            f"{shards_dir} holds shards written with other settings ({', '.join(changed)} differ); "
            "use another output_dir or overwrite=True"
        )


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
                ViewsDataset(dataset, start, stop, views),
                batch_size=config.batch_size,
                num_workers=config.num_workers,
                collate_fn=collate_views,
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
                    tokenizer, iter_stream_batches(chunk, views, config.batch_size), info, views, progress
                )
                _write_shard(columns, features, shards_dir, name, len(chunk), skipped)
                encoded += len(chunk)
            position += len(chunk)
            progress.set_postfix(images_per_s=f"{encoded / max(time.perf_counter() - start_time, 1e-9):.1f}")
            if len(chunk) < size:
                break
    with open(_stream_marker(shards_dir, rank, world), "w") as handle:
        json.dump({"shards": names}, handle)
    _log_speed(rank, encoded, start_time)


def _log_speed(rank: int, images: int, start_time: float) -> None:
    elapsed = time.perf_counter() - start_time
    if images:
        logger.info(f"process {rank}: tokenized {images} images in {elapsed:.1f}s ({images / elapsed:.2f} images/s)")

def _stream_marker(shards_dir: str, rank: int, world: int) -> str:
    """The file a process writes once all its stream shards exist: ``{"shards": [their names, in order]}``."""
    return os.path.join(shards_dir, f"stream-p{rank:03d}-of-{world:03d}.complete.json")


def _finished_shard_names(shards_dir, dataset, config: PretokenizeConfig, streaming: bool, world: int) -> list[str] | None:
    """Every shard name of the run in source order once all of them are written, else ``None`` (not merging yet)."""
    if streaming:
        names = []
        for rank in range(world):
            marker = _stream_marker(shards_dir, rank, world)
            if not os.path.exists(marker):
                logger.info(f"process {rank}'s stream shards are not complete yet; not merging")
                return None
            with open(marker) as handle:
                names += json.load(handle)["shards"]
        return names
    names = [name for name, _, _ in _map_shards(dataset, config)]
    missing = [name for name in names if not os.path.isdir(os.path.join(shards_dir, name))]
    if missing:
        logger.info(f"{len(missing)} of {len(names)} shards are not written yet; not merging")
        return None
    return names


__all__ = ["MANIFEST_FILE", "SHARDS_DIR", "PretokenizeConfig", "encode_views", "pretokenize_dataset"]
