"""Class-conditional generation evaluation: sample N images per class to the ADM ``.npz``, then FID / IS /
precision / recall (torch-fidelity's InceptionV3 and formulas) and the offline FD-EffNetLite0.

Sampling is split into fixed *shards* (a shard = ``shard_size`` consecutive entries of the class-major label list,
seeded with ``seed + shard_index``), so the images do not depend on how many processes ran or how often the run
was interrupted: process ``r`` of ``W`` samples the shards ``r, r + W, ...`` that are not on disk yet, and the main
process streams the finished shards into one ``samples.npz`` (``arr_0`` uint8 NHWC, ``arr_1`` labels).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.utils import logging

from .features import (
    FD_EFFNET_LITE0,
    EfficientNetLite0Features,
    InceptionV3Features,
    _require_torch_fidelity,
    extract_features,
    feature_statistics,
    frechet_distance_from_statistics,
)
from .npz import (
    ADM_IMAGES_KEY,
    ADM_LABELS_KEY,
    check_adm_images,
    iter_npz_batches,
    load_npz_array,
    write_npz_streaming,
)

logger = logging.get_logger(__name__)

SHARDS_DIRNAME = "shards"
PLAN_FILENAME = "plan.json"
SAMPLES_FILENAME = "samples.npz"
INCEPTION_METRICS = ("fid", "inception_score", "precision_recall")
ALL_METRICS = (*INCEPTION_METRICS, FD_EFFNET_LITE0)


# --------------------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class SamplingPlan:
    """Which labels and seeds every shard of a sampling run uses.

    Args:
        num_classes: classes ``0 .. C-1`` to sample (ImageNet: 1000).
        images_per_class: images per class (ADM / paper protocol: 50, i.e. 50,000 images).
        shard_size: images per shard file (the unit of resumption and of work sharing).
        seed: shard ``i`` draws from ``torch.Generator().manual_seed(seed + i)``.

    >>> plan = SamplingPlan(num_classes=3, images_per_class=2, shard_size=4)
    >>> plan.num_shards, plan.shard_labels(1).tolist(), plan.shard_seed(1)
    (2, [2, 2], 1)
    """

    num_classes: int
    images_per_class: int = 50
    shard_size: int = 1000
    seed: int = 0

    def __post_init__(self):
        for name in ("num_classes", "images_per_class", "shard_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")

    @property
    def num_images(self) -> int:
        return self.num_classes * self.images_per_class

    @property
    def labels(self) -> np.ndarray:
        """``[num_images]`` int64 labels, class-major: ``images_per_class`` zeros, then ones, ..."""
        return np.repeat(np.arange(self.num_classes, dtype=np.int64), self.images_per_class)

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_images / self.shard_size)

    def shard_labels(self, index: int) -> np.ndarray:
        if not 0 <= index < self.num_shards:
            raise ValueError(f"shard index must lie in [0, {self.num_shards}), got {index}")
        return self.labels[index * self.shard_size : (index + 1) * self.shard_size]

    def shard_seed(self, index: int) -> int:
        return self.seed + index

    def shards_of_process(self, process_index: int, num_processes: int) -> list[int]:
        """Round-robin assignment: process ``r`` of ``W`` owns shards ``r, r + W, r + 2W, ...``."""
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index must lie in [0, {num_processes}), got {process_index}")
        return list(range(process_index, self.num_shards, num_processes))


def _shard_path(output_dir: Path, index: int) -> Path:
    return output_dir / SHARDS_DIRNAME / f"shard_{index:05d}.npz"


def _sampling_to_json(sampling) -> object:
    if sampling is None or isinstance(sampling, str):
        return sampling
    if hasattr(sampling, "to_dict"):
        return sampling.to_dict()
    raise ValueError(f"sampling must be None, a preset name or a SamplingParams, got {type(sampling).__name__}")


def _check_or_write_plan(output_dir: Path, record: dict) -> None:
    path = output_dir / PLAN_FILENAME
    if path.exists():
        existing = json.loads(path.read_text())
        if existing != record:
            raise ValueError(
                f"{output_dir} already holds shards of a different sampling run ({path}: {existing}); "
                f"this run is {record}. Use a new output_dir."
            )
        return
    tmp = path.with_name(f"{PLAN_FILENAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------------- sampling
def generate_shards(
    pipeline,
    output_dir: str | os.PathLike,
    plan: SamplingPlan,
    batch_size: int = 32,
    sampling=None,
    process_index: int = 0,
    num_processes: int = 1,
    pipeline_kwargs: dict | None = None,
) -> list[int]:
    """Sample this process's missing shards of ``plan`` with ``pipeline`` and write them to ``output_dir/shards``.

    Args:
        pipeline: a :class:`~prologue_hf.ProloguePipeline` (called as ``pipeline(class_labels=..., generator=...,
            sampling=..., output_type="uint8")``, which returns uint8 ``[B, 3, H, W]``).
        plan: the :class:`SamplingPlan`.
        batch_size: images per pipeline call (a shard is sampled in ``ceil(shard_size / batch_size)`` calls).
        sampling: passed to the pipeline (a ``SamplingParams`` or preset name; ``None`` = the pipeline default).
        process_index / num_processes: this worker's rank and the world size (see :func:`sample_to_npz`).
        pipeline_kwargs: extra keyword arguments for every pipeline call.

    Returns:
        the indices of the shards written by this call (already finished shards are skipped).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    output_dir = Path(output_dir)
    (output_dir / SHARDS_DIRNAME).mkdir(parents=True, exist_ok=True)
    record = {**dataclasses.asdict(plan), "sampling": _sampling_to_json(sampling)}
    _check_or_write_plan(output_dir, record)
    todo = [i for i in plan.shards_of_process(process_index, num_processes) if not _shard_path(output_dir, i).exists()]
    if not todo:
        logger.info(f"process {process_index}: all its shards in {output_dir} are finished")
        return []
    device = getattr(pipeline, "device", torch.device("cpu"))
    written = []
    for index in tqdm(todo, desc=f"shards (process {process_index})"):
        labels = plan.shard_labels(index)
        generator = torch.Generator(device=device).manual_seed(plan.shard_seed(index))
        chunks = []
        for start in range(0, len(labels), batch_size):
            out = pipeline(
                class_labels=labels[start : start + batch_size].tolist(),
                generator=generator,
                sampling=sampling,
                output_type="uint8",
                **(pipeline_kwargs or {}),
            )
            chunks.append(out.images.permute(0, 2, 3, 1).cpu().numpy())  # uint8 [B, 3, H, W] -> NHWC
        images = np.concatenate(chunks)
        if images.shape[0] != len(labels):
            raise RuntimeError(f"the pipeline returned {images.shape[0]} images for {len(labels)} labels")
        path = _shard_path(output_dir, index)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, path)  # atomic: a shard file on disk is always complete
        written.append(index)
    return written


def merge_shards(output_dir: str | os.PathLike, filename: str = SAMPLES_FILENAME) -> Path:
    """Stream every shard of ``output_dir`` into the ADM ``.npz`` (``arr_0`` uint8 ``[N, H, W, 3]``, ``arr_1``
    labels ``[N]``) without holding all images in memory. Raises ``FileNotFoundError`` if a shard is missing."""
    output_dir = Path(output_dir)
    record = json.loads((output_dir / PLAN_FILENAME).read_text())
    plan = SamplingPlan(**{f.name: record[f.name] for f in dataclasses.fields(SamplingPlan)})
    paths = [_shard_path(output_dir, i) for i in range(plan.num_shards)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {plan.num_shards} shards are not sampled yet, e.g. {missing[:3]}")
    with np.load(paths[0]) as first:
        image_shape = first["images"].shape[1:]

    def chunks(key):
        for path in paths:
            with np.load(path) as shard:
                yield shard[key]

    return write_npz_streaming(
        output_dir / filename,
        {
            ADM_IMAGES_KEY: ((plan.num_images, *image_shape), np.uint8, chunks("images")),
            ADM_LABELS_KEY: ((plan.num_images,), np.int64, chunks("labels")),
        },
    )


def sample_to_npz(
    pipeline,
    output_dir: str | os.PathLike,
    num_classes: int | None = None,
    images_per_class: int = 50,
    batch_size: int = 32,
    shard_size: int = 1000,
    seed: int = 0,
    sampling=None,
    pipeline_kwargs: dict | None = None,
) -> Path | None:
    """Sample ``images_per_class`` images of every class into ``output_dir/samples.npz`` (ADM layout), resumably and
    split over all processes of the current ``accelerate`` launch.

    Run it under ``accelerate launch`` for several GPUs: each process takes every ``W``-th shard; after a barrier
    the main process merges. Re-running after an interruption samples only the missing shards. The images are the
    same for any number of processes (each shard has its own seed).

    Returns:
        the path of ``samples.npz`` on the main process, ``None`` on the others.

    >>> from prologue_hf.testing import tiny_pipeline  # doctest: +SKIP
    >>> sample_to_npz(tiny_pipeline(), "out", num_classes=2, images_per_class=2, shard_size=2)  # doctest: +SKIP
    PosixPath('out/samples.npz')
    """
    from accelerate import PartialState

    state = PartialState()
    if num_classes is None:
        num_classes = pipeline.ar.config.num_classes
    plan = SamplingPlan(num_classes, images_per_class, shard_size, seed)
    generate_shards(
        pipeline, output_dir, plan, batch_size, sampling, state.process_index, state.num_processes, pipeline_kwargs
    )
    state.wait_for_everyone()
    path = merge_shards(output_dir) if state.is_main_process else None
    state.wait_for_everyone()
    return path


# --------------------------------------------------------------------------------------------------------- metrics
def _image_batches(images: str | os.PathLike | np.ndarray, batch_size: int) -> tuple[Iterable[np.ndarray], int]:
    if isinstance(images, (str, os.PathLike)):
        num_images = check_adm_images(images)[0]
        return iter_npz_batches(images, ADM_IMAGES_KEY, batch_size), math.ceil(num_images / batch_size)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be an ADM .npz path or uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    return (images[i : i + batch_size] for i in range(0, len(images), batch_size)), math.ceil(len(images) / batch_size)


def _features(extractor: nn.Module, images, batch_size: int, desc: str) -> dict[str, torch.Tensor]:
    batches, total = _image_batches(images, batch_size)
    return extract_features(extractor, batches, total=total, desc=desc)


@torch.no_grad()
def _npz_statistics(reference: str | os.PathLike | np.ndarray) -> dict[str, np.ndarray]:
    """FID reference ``mu`` / ``sigma`` stored in an ADM reference ``.npz`` (TF-Inception statistics)."""
    if not isinstance(reference, (str, os.PathLike)):
        raise ValueError("use_reference_statistics needs the reference as an .npz path")
    mu, sigma = load_npz_array(reference, "mu"), load_npz_array(reference, "sigma")
    if mu is None or sigma is None:
        raise ValueError(f"{reference} has no 'mu' / 'sigma' arrays; set use_reference_statistics=False")
    return {"mu": mu, "sigma": sigma}


def compute_generation_metrics(
    samples: str | os.PathLike | np.ndarray,
    reference: str | os.PathLike | np.ndarray,
    metrics: Sequence[str] = ALL_METRICS,
    inception_weights: str | os.PathLike | None = None,
    inception: nn.Module | None = None,
    effnet: nn.Module | None = None,
    batch_size: int = 100,
    device: str | torch.device = "cpu",
    use_reference_statistics: bool = False,
    inception_score_splits: int = 10,
    precision_recall_neighborhood: int = 3,
) -> dict[str, float]:
    """Generation metrics of ``samples`` against ``reference`` (ADM ``.npz`` paths or uint8 ``[N, H, W, 3]``).

    Args:
        metrics: any of ``"fid"``, ``"inception_score"``, ``"precision_recall"`` (these three need InceptionV3) and
            ``"fd_effnet_lite0"`` (offline; Fréchet distance on EfficientNet-Lite0 features, *not* FID).
        inception_weights: local TF-FID InceptionV3 weights (see :class:`InceptionV3Features`); required for the
            Inception metrics unless ``inception`` is given. Missing -> ``FileNotFoundError`` with instructions.
        inception / effnet: prebuilt extractors (reuse across calls; tests pass small stand-ins).
        batch_size: images per extractor call.
        use_reference_statistics: take FID's reference ``mu`` / ``sigma`` from the reference ``.npz`` (the ADM
            batches ship TF-Inception statistics) instead of computing them from its ``arr_0``.
        inception_score_splits: IS splits (10, as ADM and torch-fidelity).
        precision_recall_neighborhood: k of the k-NN manifolds (3, Kynkäänniemi et al. 2019, as ADM).

    Returns:
        dict with ``fid``, ``inception_score``, ``inception_score_std``, ``precision``, ``recall``,
        ``fd_effnet_lite0`` (those asked for) and ``num_samples``.
    """
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {ALL_METRICS}, got {list(metrics)}")
    _require_torch_fidelity()
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    results: dict[str, float] = {}
    if any(m in INCEPTION_METRICS for m in metrics):
        inception = inception if inception is not None else InceptionV3Features(inception_weights)
        inception = inception.to(device)
        gen = _features(inception, samples, batch_size, "InceptionV3 (samples)")
        results["num_samples"] = len(gen["features"])
        if "inception_score" in metrics:
            if results["num_samples"] < inception_score_splits:
                raise ValueError(
                    f"the Inception Score needs at least inception_score_splits={inception_score_splits} samples, "
                    f"got {results['num_samples']}"
                )
            score = isc_features_to_metric(gen["logits"], splits=inception_score_splits, shuffle=True, rng_seed=2020)
            results["inception_score"] = score[KEY_METRIC_ISC_MEAN]
            results["inception_score_std"] = score[KEY_METRIC_ISC_STD]
        need_ref_features = "precision_recall" in metrics or ("fid" in metrics and not use_reference_statistics)
        ref = _features(inception, reference, batch_size, "InceptionV3 (reference)") if need_ref_features else None
        if "fid" in metrics:
            ref_stats = _npz_statistics(reference) if use_reference_statistics else feature_statistics(ref["features"])
            results["fid"] = frechet_distance_from_statistics(feature_statistics(gen["features"]), ref_stats)
        if "precision_recall" in metrics:
            # torch-fidelity's convention: features_1 generated, features_2 real; batched distances (bounded memory)
            prc = prc_features_to_metric(
                gen["features"],
                ref["features"],
                prc_neighborhood=precision_recall_neighborhood,
                prc_batch_size=10000,
                save_cpu_ram=True,
                verbose=False,
            )
            results["precision"] = prc[KEY_METRIC_PRECISION]
            results["recall"] = prc[KEY_METRIC_RECALL]
    if FD_EFFNET_LITE0 in metrics:
        effnet = (effnet if effnet is not None else EfficientNetLite0Features()).to(device)
        gen = _features(effnet, samples, batch_size, "EfficientNet-Lite0 (samples)")["features"]
        ref = _features(effnet, reference, batch_size, "EfficientNet-Lite0 (reference)")["features"]
        results.setdefault("num_samples", len(gen))
        results[FD_EFFNET_LITE0] = frechet_distance_from_statistics(feature_statistics(gen), feature_statistics(ref))
    return results


# --------------------------------------------------------------------------------------------------------- CFG sweep
def with_visual_guidance_scale(sampling, scale: float):
    """``sampling`` (a segmented ``SamplingParams``) with only the visual guidance scale replaced: the paper's
    Fig. A1 sweep of ``s_vis`` at fixed ``s_pro`` and cosine power."""
    if getattr(sampling, "visual_guidance", None) is None:
        raise ValueError("sampling must be a segmented SamplingParams with visual_guidance set (e.g. a Table A5 preset)")
    return dataclasses.replace(sampling, visual_guidance=dataclasses.replace(sampling.visual_guidance, scale=scale))


def run_cfg_sweep(
    pipeline,
    scales: Sequence[float],
    output_dir: str | os.PathLike,
    metric_fn: Callable[[Path], dict[str, float]],
    sampling=None,
    sampling_for_scale: Callable[[float], object] | None = None,
    **sample_kwargs,
) -> list[dict[str, float]]:
    """Sample and score one run per guidance scale (paper Fig. A1), resumably.

    Args:
        scales: the visual guidance scales ``s_vis`` to try.
        metric_fn: ``samples.npz`` path -> metrics dict, e.g. ``functools.partial(compute_generation_metrics,
            reference=..., inception_weights=...)``.
        sampling: base ``SamplingParams`` (a segmented preset); each run replaces its visual scale.
        sampling_for_scale: alternatively, any ``scale -> sampling`` function.
        sample_kwargs: forwarded to :func:`sample_to_npz` (``images_per_class``, ``seed``, ...).

    Returns:
        one ``{"scale": s, **metrics}`` per scale; also written to ``output_dir/cfg_sweep.json``.
    """
    if (sampling is None) == (sampling_for_scale is None):
        raise ValueError("give exactly one of sampling (a base SamplingParams) and sampling_for_scale")
    make = sampling_for_scale or (lambda s: with_visual_guidance_scale(sampling, s))
    output_dir = Path(output_dir)
    results = []
    for scale in scales:
        run_dir = output_dir / f"scale_{scale:g}"
        done = run_dir / "metrics.json"
        if done.exists():
            metrics = json.loads(done.read_text())
        else:
            npz = sample_to_npz(pipeline, run_dir, sampling=make(scale), **sample_kwargs)
            if npz is None:  # not the main process
                continue
            metrics = metric_fn(npz)
            done.write_text(json.dumps(metrics, indent=2))
        results.append({"scale": float(scale), **metrics})
    if results:
        (output_dir / "cfg_sweep.json").write_text(json.dumps(results, indent=2))
    return results


__all__ = [
    "ALL_METRICS",
    "INCEPTION_METRICS",
    "SamplingPlan",
    "compute_generation_metrics",
    "generate_shards",
    "merge_shards",
    "run_cfg_sweep",
    "sample_to_npz",
    "with_visual_guidance_scale",
]
