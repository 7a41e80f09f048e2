"""FID, Inception Score and precision / recall as an `evaluate` module shipped with prologue-hf.

The InceptionV3 network and the metric formulas are torch-fidelity's; the TF-FID InceptionV3 weights must be given
as a local file (inception_weights=...), they are never downloaded."""

import evaluate

from prologue_hf.evaluation import image_metric_info
from prologue_hf.evaluation.features import stack_images
from prologue_hf.evaluation.generation import INCEPTION_METRICS, compute_generation_metrics

_DESCRIPTION = """FID (Fréchet distance of InceptionV3 pool3 features), Inception Score (10 splits) and
precision / recall (k=3 nearest-neighbour manifolds) of generated images against reference images, with
torch-fidelity's TF-compatible InceptionV3 ("inception-v3-compat")."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: generated images (PIL or uint8 [H, W, 3] arrays).
    reference_npz: path to an ADM .npz reference batch (e.g. VIRTUAL_imagenet256_labeled.npz), or
    reference_images: reference images (list or uint8 [N, H, W, 3] array).
    inception_weights: path to the local TF-FID InceptionV3 weights (weights-inception-2015-12-05-6726825d.pth). Required.
    metrics: subset of ("fid", "inception_score", "precision_recall"); default all.
    use_reference_statistics: FID against the mu / sigma stored in reference_npz (default False).
    batch_size, device: network batch size (default 100) and torch device (default "cpu").
Returns:
    fid, inception_score, inception_score_std, precision, recall (those asked for), num_samples.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class InceptionMetrics(evaluate.Metric):
    def _info(self):
        return image_metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(
        self,
        predictions,
        reference_npz=None,
        reference_images=None,
        inception_weights=None,
        metrics=INCEPTION_METRICS,
        use_reference_statistics=False,
        batch_size=100,
        device="cpu",
    ):
        if (reference_images is None) == (reference_npz is None):
            raise ValueError("pass exactly one of reference_npz and reference_images")
        reference = reference_npz
        if reference_images is not None:
            reference = stack_images(reference_images).permute(0, 2, 3, 1).numpy()
        samples = stack_images(predictions).permute(0, 2, 3, 1).numpy()
        return compute_generation_metrics(
            samples,
            reference,
            metrics=tuple(metrics),
            inception_weights=inception_weights,
            batch_size=batch_size,
            device=device,
            use_reference_statistics=use_reference_statistics,
        )
