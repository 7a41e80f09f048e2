"""PSNR and SSIM of image pairs, as an `evaluate` module shipped with prologue-hf (loads offline)."""

import evaluate

from prologue_hf.evaluation import image_metric_info
from prologue_hf.evaluation.features import stack_images
from prologue_hf.evaluation.reconstruction import psnr, ssim

_DESCRIPTION = """Per-image PSNR (dB) and SSIM between predictions (e.g. tokenizer reconstructions) and references
(the originals) on 8-bit images, averaged over images (data range 255; SSIM by torchmetrics with an
11x11 Gaussian window, sigma 1.5). Identical pairs (PSNR = inf) are left out of the PSNR mean."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: images (PIL or uint8 [H, W, 3] arrays), all of one size.
    references: the images to compare with, same count and size.
    compute_ssim: also return SSIM (default True).
Returns:
    psnr: mean PSNR in dB.
    ssim: mean SSIM (if computed).
Examples:
    >>> import numpy as np
    >>> from prologue_hf.evaluation import load_metric
    >>> metric = load_metric("psnr_ssim")
    >>> a = np.zeros((8, 8, 3), np.uint8)
    >>> round(metric.compute(predictions=[a + 1], references=[a], compute_ssim=False)["psnr"], 4)
    48.1308
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PsnrSsim(evaluate.Metric):
    def _info(self):
        return image_metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, with_references=True)

    def _compute(self, predictions, references, compute_ssim=True):
        preds, refs = stack_images(predictions), stack_images(references)
        values = psnr(preds, refs)
        finite = values[values.isfinite()]
        result = {"psnr": float(finite.mean()) if len(finite) else float("inf")}
        if compute_ssim:
            result["ssim"] = float(ssim(preds, refs).mean())
        return result
