"""Tokenizer reconstruction metrics: PSNR, SSIM, rFID (or the offline rFD-EffNetLite0) and codebook usage.

Protocol of the paper (Sec. 4): rFID and PSNR on the ImageNet validation set (50k images, 256x256 center crops).
rFID is the Fréchet distance between InceptionV3 features of the originals and of their reconstructions. PSNR and
SSIM are computed per image on the 8-bit images (reconstructions clamped to ``[-1, 1]`` and rounded to uint8, what a
user would save) and averaged over images.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.utils import logging

from ..image_grid import image_grid
from ..models.modeling_prologue_tokenizer import PrologueTokenizerModel
from .features import feature_statistics, frechet_distance_from_statistics

logger = logging.get_logger(__name__)


def psnr(reconstructions: torch.Tensor, originals: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Per-image PSNR in dB, ``10 log10(data_range^2 / MSE)``, for ``[B, C, H, W]`` images (float64 throughout).

    Pass uint8 images with ``data_range=255``. Identical images give ``inf``.

    >>> a = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    >>> round(float(psnr(a + 1, a)), 4)  # MSE = 1 -> 20 log10(255)
    48.1308
    """
    if reconstructions.shape != originals.shape or reconstructions.ndim != 4:
        raise ValueError(
            f"reconstructions and originals must both be [B, C, H, W], got {list(reconstructions.shape)} and "
            f"{list(originals.shape)}"
        )
    mse = (reconstructions.double() - originals.double()).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(data_range**2 / mse)


def ssim(reconstructions: torch.Tensor, originals: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Per-image SSIM (torchmetrics; Gaussian window 11, sigma 1.5) of ``[B, C, H, W]`` images, in ``[-1, 1]``."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    if reconstructions.shape != originals.shape or reconstructions.ndim != 4:
        raise ValueError(f"shapes differ or are not [B, C, H, W]: {list(reconstructions.shape)}, {list(originals.shape)}")
    return structural_similarity_index_measure(
        reconstructions.double(), originals.double(), data_range=data_range, reduction="none"
    )


@dataclass
class ReconstructionResults:
    """Aggregated reconstruction metrics.

    Attributes:
        num_images: images evaluated.
        psnr: mean per-image PSNR (dB) on uint8 images.
        ssim: mean per-image SSIM, or None when not computed.
        frechet: name -> Fréchet distance originals vs reconstructions, one per feature extractor (``"rfid"`` for
            InceptionV3, ``"rfd_effnet_lite0"`` for the offline EfficientNet-Lite0 features).
        codebook_usage: ``{"visual": {"usage", "perplexity"}, "prologue": {...}}`` (fraction of codes used and
            perplexity of the code histogram, :meth:`PrologueTokenizerModel.codebook_usage`).
    """

    num_images: int
    psnr: float
    ssim: float | None = None
    frechet: dict[str, float] = field(default_factory=dict)
    codebook_usage: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _pixel_values(batch) -> torch.Tensor:
    """A batch from a dataloader -> float ``[B, C, H, W]`` in ``[-1, 1]``."""
    if isinstance(batch, Mapping):
        if "pixel_values" not in batch:
            raise ValueError(f"batch dicts must have a 'pixel_values' entry, got keys {sorted(batch)}")
        batch = batch["pixel_values"]
    elif isinstance(batch, (tuple, list)):
        batch = batch[0]
    if isinstance(batch, np.ndarray):  # uint8 NHWC
        return PrologueTokenizerModel.preprocess(batch)
    if not isinstance(batch, torch.Tensor) or batch.ndim != 4:
        raise ValueError("each batch must be (or hold under 'pixel_values') an image tensor [B, C, H, W]")
    if batch.dtype == torch.uint8:
        return PrologueTokenizerModel.preprocess(batch)
    return batch.float()


def _mean_finite_psnr(values: torch.Tensor) -> float:
    """Mean PSNR over the images not reconstructed exactly (``inf``), with a warning naming how many were left out."""
    finite = values[torch.isfinite(values)]
    if len(finite) < len(values):
        logger.warning(f"{len(values) - len(finite)} images were reconstructed exactly (PSNR = inf); excluded")
    return float(finite.mean()) if len(finite) else float("inf")


def _save_comparison_grid(
    originals: torch.Tensor, reconstructions: torch.Tensor, columns: int, path: str | os.PathLike
) -> None:
    """A PNG of the first ``columns`` originals (top row) over their reconstructions (bottom row); uint8 [B, C, H, W]."""
    count = min(columns, originals.shape[0])
    grid = image_grid(
        torch.cat([originals[:count], reconstructions[:count]]), rows=2, labels=["original", "reconstruction"]
    )
    grid.save(path)


@torch.no_grad()
def evaluate_reconstruction(
    tokenizer: PrologueTokenizerModel,
    batches: Iterable,
    extractors: Mapping[str, nn.Module] | None = None,
    max_images: int | None = None,
    compute_ssim: bool = True,
    grid_path: str | os.PathLike | None = None,
    grid_columns: int = 8,
    total_batches: int | None = None,
) -> ReconstructionResults:
    """Reconstruct every image of ``batches`` with ``tokenizer`` (encode -> visual ids -> decode) and score it.

    Args:
        tokenizer: the tokenizer (its device is used).
        batches: iterable of image batches: float ``[B, C, H, W]`` in ``[-1, 1]``, uint8 ``[B, C, H, W]``, or dicts /
            tuples holding them under ``"pixel_values"`` / first.
        extractors: result name -> feature extractor (``uint8 [B, 3, H, W]`` -> ``{"features": [B, D]}``), e.g.
            ``{"rfid": InceptionV3Features(path), "rfd_effnet_lite0": EfficientNetLite0Features()}``; each gives one
            Fréchet distance between original and reconstruction features. ``None`` = no Fréchet distance.
        max_images: stop after this many images.
        compute_ssim: also compute SSIM.
        grid_path: write a PNG of the first ``grid_columns`` originals (top row) and reconstructions (bottom row).
        total_batches: for the progress bar.

    Returns:
        :class:`ReconstructionResults`.
    """
    extractors = dict(extractors or {})
    device = tokenizer.device
    for extractor in extractors.values():
        extractor.to(device)
    psnrs, ssims, visual_ids, prologue_ids = [], [], [], []
    feats: dict[str, tuple[list, list]] = {name: ([], []) for name in extractors}
    seen = 0
    grid_written = grid_path is None
    for batch in tqdm(batches, total=total_batches, desc="reconstruction"):
        pixels = _pixel_values(batch)
        if max_images is not None:
            pixels = pixels[: max_images - seen]
        if pixels.shape[0] == 0:
            break
        pixels = pixels.to(device=device, dtype=tokenizer.dtype)
        encoded = tokenizer.encode(pixels)
        reconstruction = tokenizer.decode(encoded.visual_ids).pixel_values
        originals = PrologueTokenizerModel.postprocess(pixels, "uint8")
        recons = PrologueTokenizerModel.postprocess(reconstruction, "uint8")
        psnrs.append(psnr(recons, originals).cpu())
        if compute_ssim:
            ssims.append(ssim(recons, originals).cpu())
        # int32 keeps 50k x 256 ids at ~50 MB for the usage statistics
        visual_ids.append(encoded.visual_ids.to(torch.int32).cpu())
        if encoded.prologue_ids is not None:
            prologue_ids.append(encoded.prologue_ids.to(torch.int32).cpu())
        for name, extractor in extractors.items():
            feats[name][0].append(extractor(originals)["features"].float().cpu())
            feats[name][1].append(extractor(recons)["features"].float().cpu())
        if not grid_written:
            _save_comparison_grid(originals, recons, grid_columns, grid_path)
            grid_written = True
        seen += pixels.shape[0]
        if max_images is not None and seen >= max_images:
            break
    if seen == 0:
        raise ValueError("batches yielded no images")

    frechet = {}
    for name, (orig, rec) in feats.items():
        frechet[name] = frechet_distance_from_statistics(
            feature_statistics(torch.cat(orig)), feature_statistics(torch.cat(rec))
        )
    usage = {"visual": tokenizer.codebook_usage(torch.cat(visual_ids), "visual")}
    if prologue_ids:
        usage["prologue"] = tokenizer.codebook_usage(torch.cat(prologue_ids), "prologue")
    return ReconstructionResults(
        num_images=seen,
        psnr=_mean_finite_psnr(torch.cat(psnrs)),
        ssim=float(torch.cat(ssims).mean()) if ssims else None,
        frechet=frechet,
        codebook_usage=usage,
    )


__all__ = ["ReconstructionResults", "evaluate_reconstruction", "psnr", "ssim"]
