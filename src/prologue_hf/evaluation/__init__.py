"""Evaluation: reconstruction (PSNR / SSIM / rFID / codebook usage), generation (ADM ``.npz`` sampling, FID / IS /
precision / recall, offline FD-EffNetLite0), linear probe, and ``evaluate`` modules shipped with the package."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .dataloader import evaluation_dataloader
from .features import (
    FD_EFFNET_LITE0,
    EfficientNetLite0,
    EfficientNetLite0Features,
    InceptionV3Features,
    as_uint8_images,
    extract_features,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_statistics,
    stack_images,
)
from .generation import (
    ALL_METRICS,
    INCEPTION_METRICS,
    SamplingPlan,
    compute_generation_metrics,
    generate_shards,
    merge_shards,
    run_cfg_sweep,
    sample_to_npz,
    with_visual_guidance_scale,
)
from .npz import ADM_IMAGES_KEY, ADM_LABELS_KEY, check_adm_images, iter_npz_batches, write_npz_streaming
from .probe import (
    LinearProbe,
    LinearProbeResult,
    extract_probe_features,
    pooled_token_features,
    train_linear_probe,
)
from .reconstruction import ReconstructionResults, evaluate_reconstruction, psnr, ssim

if TYPE_CHECKING:
    import evaluate

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
"""Folder of the ``evaluate`` modules shipped with the package (one sub-folder per module)."""


def available_metrics() -> list[str]:
    """Names of the shipped ``evaluate`` modules: ``fd_effnet_lite0``, ``inception_metrics``, ``psnr_ssim``."""
    return sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())


def image_metric_info(
    description: str, inputs_description: str, with_references: bool = False
) -> evaluate.MetricInfo:
    """The ``evaluate.MetricInfo`` of a shipped image metric: ``predictions`` (and, ``with_references=True``,
    ``references``) are ``datasets.Image()`` columns; no citation."""
    import datasets
    import evaluate

    columns = ("predictions", "references") if with_references else ("predictions",)
    return evaluate.MetricInfo(
        description=description,
        citation="",
        inputs_description=inputs_description,
        features=datasets.Features({column: datasets.Image() for column in columns}),
    )


def load_metric(name: str, **kwargs):
    """``evaluate.load`` of a shipped module by name, from its local folder (no Hub access).

    >>> metric = load_metric("psnr_ssim")  # doctest: +SKIP
    >>> metric.compute(predictions=[image_a], references=[image_b])  # doctest: +SKIP
    """
    import evaluate

    if name not in available_metrics():
        raise ValueError(f"unknown metric {name!r}; the package ships {available_metrics()}")
    return evaluate.load(str(METRICS_DIR / name), **kwargs)


__all__ = [
    "ADM_IMAGES_KEY",
    "ADM_LABELS_KEY",
    "ALL_METRICS",
    "FD_EFFNET_LITE0",
    "INCEPTION_METRICS",
    "METRICS_DIR",
    "EfficientNetLite0",
    "EfficientNetLite0Features",
    "InceptionV3Features",
    "LinearProbe",
    "LinearProbeResult",
    "ReconstructionResults",
    "SamplingPlan",
    "as_uint8_images",
    "available_metrics",
    "check_adm_images",
    "compute_generation_metrics",
    "evaluate_reconstruction",
    "evaluation_dataloader",
    "extract_features",
    "extract_probe_features",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_statistics",
    "image_metric_info",
    "generate_shards",
    "iter_npz_batches",
    "load_metric",
    "merge_shards",
    "pooled_token_features",
    "psnr",
    "run_cfg_sweep",
    "sample_to_npz",
    "ssim",
    "stack_images",
    "train_linear_probe",
    "with_visual_guidance_scale",
    "write_npz_streaming",
]
