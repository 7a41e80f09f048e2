"""Frozen visual-tokenizer adapters: one small interface over existing VQ tokenizers, for Prologue-Post.

Prologue-Post (paper section 2.3, appendix D Table A1) keeps an existing visual tokenizer frozen and only adds a
prologue encoder, a Prob-STE quantizer and a compact AR trained with ``L_AR``. The frozen tokenizer only has to
(1) turn pixels into visual ids on a grid, (2) turn ids back into pixels and (3) expose the encoder output the
prologue encoder reads. :class:`VisualTokenizerAdapter` is that contract; one subclass per model family:

=========================  =====================================================  ===========================  =====
adapter                    wrapped model                                          ``features`` (D)             decode
=========================  =====================================================  ===========================  =====
PrologueTokenizerAdapter   :class:`~prologue_hf.PrologueTokenizerModel` (2D use)  encoder output at patches    yes
DiffusersVQModelAdapter    ``diffusers.VQModel``                                  ``encode(x).latents``        yes
JanusVQVAEAdapter          ``transformers.JanusVQVAE``                            ``encode(x).last_hidden``    yes
Emu3VQVAEAdapter           ``transformers.Emu3VQVAE``                             ``encode(x).last_hidden``    yes
ChameleonVQVAEAdapter      ``transformers.ChameleonVQVAE``                        ``encode(x).last_hidden``    no
=========================  =====================================================  ===========================  =====

Conventions shared by every adapter:

* Inputs are ``pixel_values`` ``[B, C, S, S]`` in ``[-1, 1]`` (the Prologue convention, ``x / 127.5 - 1``). Each
  adapter maps them linearly onto the range its model was trained on (``input_range``) and maps decoded pixels
  back to ``[-1, 1]``; e.g. ``ChameleonImageProcessor`` computes ``x * 0.0078 - 1``, i.e. ``[-1, 0.989]``.
* Ids are ``[B, h * w]`` in raster order over the latent grid (row-major, as every wrapped quantizer flattens).
* The wrapped model is put in eval mode with ``requires_grad_(False)``; ``tokenize`` / ``decode`` run under
  ``torch.no_grad()``: the visual pathway gets no gradient (paper: "all parameters of the existing Tokenizer are
  frozen").
* :meth:`VisualTokenizerAdapter.identity` describes the tokenizer without its location (adapter type, model class,
  the model's own config, image size, input range and a SHA-256 of its weights);
  :func:`load_visual_tokenizer` reloads it from a repo id / local folder and checks it is the same tokenizer.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers.utils import ModelOutput, logging

from ..identity import clean_config, weights_sha256
from .modeling_prologue_tokenizer import check_pixel_range

logger = logging.get_logger(__name__)


@dataclass
class VisualTokenizerOutput(ModelOutput):
    """Output of :meth:`VisualTokenizerAdapter.tokenize`.

    Attributes:
        visual_ids: ``[B, N]`` int64 ids in ``[0, codebook_size)``, raster order over the ``(h, w)`` grid.
        features: ``[B, N, feature_dim]`` frozen encoder output at the grid positions (what the Prologue-Post
            encoder reads when ``encoder_input="features"``).
    """

    visual_ids: torch.Tensor | None = None
    features: torch.Tensor | None = None


def _grid_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, D, h, w] -> [B, h * w, D]`` (raster order)."""
    return x.flatten(2).transpose(1, 2)


def _flat_tokens_and_grid_features(model: nn.Module, model_pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``_tokenize`` of the transformers VQ-VAEs whose ``encode`` returns flat ``image_tokens`` ``[B*h*w]`` and
    the encoder output ``last_hidden_state`` ``[B, D, h, w]`` (Janus, Chameleon): ids ``[B, h*w]``, features
    ``[B, h*w, D]``."""
    out = model.encode(model_pixels)
    return out.image_tokens.reshape(model_pixels.shape[0], -1), _grid_tokens(out.last_hidden_state)


def _import_object(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class VisualTokenizerAdapter(ABC):
    """A frozen VQ tokenizer seen through the interface Prologue-Post needs.

    Subclasses set ``adapter_type`` / ``model_class_path`` and implement ``codebook_size``, ``grid_shape``,
    ``feature_dim``, ``_tokenize`` and ``_decode``; the base class does input checks, range mapping, freezing and
    identity.

    Args:
        model: the tokenizer model (any ``nn.Module`` of the adapter's model class); it is frozen in place.
        image_size: side of the square input images in pixels (default: from the model's config where it has one).
        input_range: ``(low, high)`` pixel range the model expects; ``[-1, 1]`` inputs are mapped linearly onto it.
        name_or_path: repo id or local folder the model was loaded from (default: the model config's
            ``_name_or_path``); recorded so a Prologue-Post checkpoint can reload the tokenizer.
        subfolder: subfolder of ``name_or_path`` holding the model, if any.
    """

    adapter_type: ClassVar[str]
    model_class_path: ClassVar[str]
    # ``model_type`` (transformers) or ``_class_name`` (diffusers) in the model's config.json: see detect_adapter_type
    config_marker: ClassVar[str]
    default_input_range: ClassVar[tuple[float, float]] = (-1.0, 1.0)
    can_decode: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        image_size: int | None = None,
        input_range: tuple[float, float] | list[float] | None = None,
        name_or_path: str | None = None,
        subfolder: str | None = None,
    ):
        expected = self.model_class()
        if not isinstance(model, expected):
            raise ValueError(f"{type(self).__name__} wraps a {expected.__name__}, got {type(model).__name__}")
        self.model = model.eval().requires_grad_(False)
        self.image_size = int(image_size) if image_size is not None else self._default_image_size()
        if self.image_size is None:
            raise ValueError(f"image_size is required for {type(self).__name__}: {expected.__name__} has no fixed size")
        low, high = (float(v) for v in (input_range if input_range is not None else self.default_input_range))
        if not low < high:
            raise ValueError(f"input_range must be (low, high) with low < high, got {(low, high)}")
        self.input_range = (low, high)
        if name_or_path is None:
            name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
        if name_or_path is not None and os.path.isdir(name_or_path):
            name_or_path = os.path.abspath(name_or_path)
        self.name_or_path = name_or_path
        self.subfolder = subfolder
        # True when the weights came from a copy inside a Prologue-Post checkpoint (saving elsewhere copies them).
        self.embedded_in_checkpoint = False
        self._check_geometry()

    # ------------------------------------------------------------------ per-model hooks
    @classmethod
    def model_class(cls) -> type:
        """The wrapped model class (imported lazily: diffusers is only imported when its adapter is used)."""
        return _import_object(cls.model_class_path)

    @property
    @abstractmethod
    def codebook_size(self) -> int:
        """Number of visual codes V."""

    @property
    @abstractmethod
    def grid_shape(self) -> tuple[int, int]:
        """``(h, w)`` latent grid of an ``image_size`` image."""

    @property
    @abstractmethod
    def feature_dim(self) -> int:
        """Channels D of :meth:`features`."""

    @abstractmethod
    def _tokenize(self, model_pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-range pixels ``[B, C, S, S]`` -> ``(ids [B, N], features [B, N, D])``."""

    @abstractmethod
    def _decode(self, visual_ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, N]`` -> model-range pixels ``[B, C, S, S]``."""

    def _default_image_size(self) -> int | None:
        return None

    def _check_geometry(self) -> None:
        """Raise ``ValueError`` when ``image_size`` does not give the grid the model decodes (subclasses add their
        model's own constraints)."""
        h, w = self.grid_shape
        if h < 1 or w < 1:
            raise ValueError(f"image_size {self.image_size} is too small for {type(self.model).__name__}: its grid is {h}x{w}")

    # ------------------------------------------------------------------ properties
    @property
    def num_tokens(self) -> int:
        """N = h * w visual ids per image."""
        h, w = self.grid_shape
        return h * w

    # The four fields a tokenizer config exposes to the AR (PrologueVocabulary.from_tokenizer_config): a frozen VQ
    # model has no prologue, so an AR over its ids alone is the 2D baseline (K = 0).
    @property
    def visual_codebook_size(self) -> int:
        """V, as a tokenizer config names it (= :attr:`codebook_size`)."""
        return self.codebook_size

    @property
    def num_visual_tokens(self) -> int:
        """N, as a tokenizer config names it (= :attr:`num_tokens`)."""
        return self.num_tokens

    num_prologue_tokens: ClassVar[int] = 0
    prologue_codebook_size: ClassVar[int] = 0

    @property
    def num_channels(self) -> int:
        """Image channels C."""
        config = self.model.config
        return int(config.get("in_channels", 3) if isinstance(config, dict) else getattr(config, "in_channels", 3))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def __deepcopy__(self, memo: dict) -> VisualTokenizerAdapter:
        # Frozen and never updated, so a copy would only cost memory: deep copies of a ProloguePostModel (an EMA,
        # a checkpoint snapshot) share the one tokenizer.
        return self

    def to(self, *args, **kwargs) -> VisualTokenizerAdapter:
        """Move / cast the wrapped model (``nn.Module.to`` arguments); returns ``self``."""
        self.model.to(*args, **kwargs)
        return self

    def __repr__(self) -> str:
        h, w = self.grid_shape
        return (
            f"{type(self).__name__}({type(self.model).__name__}, image_size={self.image_size}, grid={h}x{w}, "
            f"codebook_size={self.codebook_size}, feature_dim={self.feature_dim}, input_range={self.input_range}, "
            f"name_or_path={self.name_or_path!r})"
        )

    # ------------------------------------------------------------------ range mapping
    def to_model_range(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` -> ``input_range`` (identity, bit for bit, when the model expects ``[-1, 1]``)."""
        low, high = self.input_range
        if (low, high) == (-1.0, 1.0):
            return pixel_values
        return (pixel_values + 1.0) * ((high - low) / 2.0) + low

    def from_model_range(self, pixels: torch.Tensor) -> torch.Tensor:
        """``input_range`` -> ``[-1, 1]`` (inverse of :meth:`to_model_range`)."""
        low, high = self.input_range
        if (low, high) == (-1.0, 1.0):
            return pixels
        return (pixels - low) * (2.0 / (high - low)) - 1.0

    # ------------------------------------------------------------------ checks
    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``pixel_values`` is a float ``[B, C, S, S]`` tensor in about ``[-1, 1]``."""
        expected = (self.num_channels, self.image_size, self.image_size)
        shape = "[B, " + ", ".join(map(str, expected)) + "]"
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be a tensor of shape {shape}")
        if tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape {shape} for {type(self).__name__} (image_size={self.image_size}), "
                f"got {list(pixel_values.shape)}"
            )
        if not pixel_values.is_floating_point():
            raise ValueError(f"pixel_values must be float in [-1, 1], got dtype {pixel_values.dtype}")
        # the tokenizer's rule for every adapter (NaN/Inf, [-1, 1] with resampling slack, how to convert); the adapter
        # maps [-1, 1] onto its model's own input_range itself
        check_pixel_range(pixel_values, synchronize=pixel_values.device.type == "cpu")

    def check_visual_ids(self, visual_ids: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``visual_ids`` is an integer ``[B, N]`` tensor in ``[0, codebook_size)``."""
        n = self.num_tokens
        if not isinstance(visual_ids, torch.Tensor) or visual_ids.ndim != 2 or visual_ids.shape[1] != n:
            shape = list(visual_ids.shape) if isinstance(visual_ids, torch.Tensor) else type(visual_ids).__name__
            raise ValueError(f"visual_ids must have shape [B, {n}] ({self.grid_shape[0]}x{self.grid_shape[1]} grid), got {shape}")
        if visual_ids.is_floating_point() or visual_ids.dtype == torch.bool:
            raise ValueError(f"visual_ids must be an integer tensor, got dtype {visual_ids.dtype}")
        if not visual_ids.shape[0]:
            raise ValueError("visual_ids is an empty batch (B = 0)")
        if visual_ids.numel() and (int(visual_ids.min()) < 0 or int(visual_ids.max()) >= self.codebook_size):
            raise ValueError(
                f"visual_ids must lie in [0, {self.codebook_size}); got values in "
                f"[{int(visual_ids.min())}, {int(visual_ids.max())}]"
            )

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def tokenize(self, pixel_values: torch.Tensor) -> VisualTokenizerOutput:
        """One frozen encoder pass: ``pixel_values`` ``[B, C, S, S]`` in ``[-1, 1]`` -> ids ``[B, N]`` and
        features ``[B, N, D]``."""
        self.check_pixel_values(pixel_values)
        model_pixels = self.to_model_range(pixel_values.to(self.device, self.dtype))
        ids, features = self._tokenize(model_pixels)
        return VisualTokenizerOutput(visual_ids=ids.long().reshape(pixel_values.shape[0], -1), features=features)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` ``[B, C, S, S]`` in ``[-1, 1]`` -> visual ids ``[B, N]`` (raster order)."""
        return self.tokenize(pixel_values).visual_ids

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` ``[B, C, S, S]`` in ``[-1, 1]`` -> frozen encoder output ``[B, N, D]``."""
        return self.tokenize(pixel_values).features

    @torch.no_grad()
    def decode(self, visual_ids: torch.Tensor) -> torch.Tensor:
        """Visual ids ``[B, N]`` -> pixels ``[B, C, S, S]`` in about ``[-1, 1]`` (not clamped)."""
        self.check_visual_ids(visual_ids)
        return self.from_model_range(self._decode(visual_ids.to(self.device).long()))

    # ------------------------------------------------------------------ identity, save, load
    def identity(self, with_weights: bool = True) -> dict:
        """Location-free description: adapter type, model class, the model's own config, image size, input range and
        (``with_weights``) :func:`~prologue_hf.identity.weights_sha256` of the weights."""
        model_class = type(self.model)
        identity = {
            "adapter_type": self.adapter_type,
            "adapter_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "model_class": f"{model_class.__module__}.{model_class.__qualname__}",
            "model_config": clean_config(self.model.config),
            "image_size": self.image_size,
            "input_range": list(self.input_range),
            "codebook_size": self.codebook_size,
            "grid_shape": list(self.grid_shape),
            "feature_dim": self.feature_dim,
        }
        if with_weights:
            identity["weights_sha256"] = weights_sha256(self.model)
        return identity

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save the wrapped model with its own ``save_pretrained`` (safetensors)."""
        self.model.save_pretrained(save_directory, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        subfolder: str | None = None,
        image_size: int | None = None,
        input_range: tuple[float, float] | None = None,
        **load_kwargs,
    ) -> VisualTokenizerAdapter:
        """Load the wrapped model with its class's ``from_pretrained`` (a Hub repo id or a local folder).

        >>> adapter = DiffusersVQModelAdapter.from_pretrained("path/to/vqmodel", image_size=256)  # doctest: +SKIP
        """
        if subfolder:
            load_kwargs["subfolder"] = subfolder
        model = cls.model_class().from_pretrained(str(name_or_path), **load_kwargs)
        return cls(model, image_size=image_size, input_range=input_range, name_or_path=str(name_or_path), subfolder=subfolder)


# ====================================================================================== adapters
def _downsample(channel_multiplier) -> int:
    # The VQGAN encoders of Janus / Emu3 / Chameleon halve the resolution in every level but the last.
    return 2 ** (len(channel_multiplier) - 1)


class PrologueTokenizerAdapter(VisualTokenizerAdapter):
    """Our :class:`~prologue_hf.PrologueTokenizerModel` run as a frozen 2D tokenizer.

    Visual ids and the decoder are the tokenizer's own; a ``"prologue"`` tokenizer's prologue ids are ignored (the
    Post prologue replaces them). ``features`` is the encoder output at the patch positions ``[B, N, hidden]``.
    ``"1d"`` tokenizers have no grid and are rejected.
    """

    adapter_type = "prologue"
    model_class_path = "prologue_hf.models.modeling_prologue_tokenizer.PrologueTokenizerModel"
    config_marker = "prologue_tokenizer"

    def _default_image_size(self) -> int:
        return self.model.config.image_size

    def _check_geometry(self) -> None:
        super()._check_geometry()
        config = self.model.config
        if config.tokenizer_type == "1d":
            raise ValueError("a 1D PrologueTokenizerModel has no visual grid; Prologue-Post needs a 2D tokenizer")
        if self.image_size != config.image_size:
            raise ValueError(f"image_size must be the tokenizer's image_size {config.image_size}, got {self.image_size}")

    @property
    def codebook_size(self) -> int:
        return self.model.config.visual_codebook_size

    @property
    def grid_shape(self) -> tuple[int, int]:
        return (self.model.config.grid_size,) * 2

    @property
    def feature_dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def num_channels(self) -> int:
        return self.model.config.num_channels

    def _tokenize(self, model_pixels):
        encoded = self.model.encode(model_pixels)
        return encoded.visual_ids, encoded.encoder_hidden_states[:, : self.model.config.num_patches]

    def _decode(self, visual_ids):
        return self.model.decode(visual_ids).pixel_values


class DiffusersVQModelAdapter(VisualTokenizerAdapter):
    """``diffusers.VQModel`` (VQGAN / MoVQ style).

    Verified on diffusers 0.42.1: ``encode(x).latents`` is the pre-quantisation latent ``[B, vq_embed_dim, h, w]``;
    ``quantize(h)`` returns ``(z_q, loss, (perplexity, min_encodings, indices))`` with flat indices ``[B*h*w]``;
    decoding ids is ``quantize.get_codebook_entry(ids, (B, h, w, C))`` then ``decode(z_q, force_not_quantize=True)``
    (or ``decode(ids, force_not_quantize=True, shape=...)`` when the config sets ``lookup_from_codebook``). The
    grid is ``image_size / 2**(len(block_out_channels) - 1)``. ``image_size`` defaults to ``config.sample_size``,
    which many checkpoints leave at a meaningless value: pass it explicitly. Range: ``[-1, 1]``
    (``VaeImageProcessor``).

    ``VQModel.forward`` decodes the straight-through latent ``z + (z_q - z).detach()``, which differs from the
    looked-up ``z_q`` by float rounding (~1e-6): reconstructions from ids equal ``VQModel``'s own id path exactly.
    """

    adapter_type = "diffusers_vqmodel"
    model_class_path = "diffusers.VQModel"
    config_marker = "VQModel"

    def _default_image_size(self) -> int:
        return int(self.model.config.sample_size)

    def _check_geometry(self) -> None:
        super()._check_geometry()
        ds = 2 ** (len(self.model.config.block_out_channels) - 1)
        if self.image_size % ds:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of the VQModel downsampling factor {ds}")

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.num_vq_embeddings)

    @property
    def grid_shape(self) -> tuple[int, int]:
        side = self.image_size // 2 ** (len(self.model.config.block_out_channels) - 1)
        return (side, side)

    @property
    def feature_dim(self) -> int:
        config = self.model.config
        return int(config.vq_embed_dim or config.latent_channels)

    def _tokenize(self, model_pixels):
        latents = self.model.encode(model_pixels).latents  # [B, C, h, w], pre-quantisation
        _, _, (_, _, indices) = self.model.quantize(latents)
        return indices.reshape(latents.shape[0], -1), _grid_tokens(latents)

    def _decode(self, visual_ids):
        h, w = self.grid_shape
        shape = (visual_ids.shape[0], h, w, self.feature_dim)
        flat = visual_ids.reshape(-1)
        if self.model.config.lookup_from_codebook:
            return self.model.decode(flat, force_not_quantize=True, shape=shape).sample
        codes = self.model.quantize.get_codebook_entry(flat, shape)  # [B, C, h, w]
        return self.model.decode(codes, force_not_quantize=True).sample


class JanusVQVAEAdapter(VisualTokenizerAdapter):
    """``transformers.JanusVQVAE`` (the Janus / Janus-Pro image generation tokenizer).

    Verified on transformers 5.24: ``encode(x)`` returns ``image_tokens`` (flat ``[B*h*w]``) and
    ``last_hidden_state`` (the encoder output before ``quant_conv``, ``[B, latent_channels, h, w]``: the features);
    ``decode(tokens [B, h*w])`` returns pixels. The grid is ``config.num_patches`` per side, so ``image_size``
    defaults to ``num_patches * 2**(len(channel_multiplier) - 1)`` (384 for Janus-Pro). Range ``[-1, 1]`` (SigLIP
    normalisation, mean = std = 0.5).

    The HF Janus quantizer searches the raw codebook but ``get_codebook_entry`` L2-normalises the rows it looks up;
    this adapter keeps the model's own behaviour (``decode`` is ``JanusVQVAE.decode``), so its reconstructions equal
    ``JanusVQVAE.forward`` exactly.
    """

    adapter_type = "janus_vqvae"
    model_class_path = "transformers.JanusVQVAE"
    config_marker = "janus_vqgan"

    def _default_image_size(self) -> int:
        config = self.model.config
        return config.num_patches * _downsample(config.channel_multiplier)

    def _check_geometry(self) -> None:
        super()._check_geometry()
        config = self.model.config
        ds = _downsample(config.channel_multiplier)
        if self.image_size != config.num_patches * ds:
            raise ValueError(
                f"JanusVQVAE decodes a {config.num_patches}x{config.num_patches} grid: image_size must be "
                f"{config.num_patches} * {ds} = {config.num_patches * ds}, got {self.image_size}"
            )

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.num_embeddings)

    @property
    def grid_shape(self) -> tuple[int, int]:
        return (self.model.config.num_patches,) * 2

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.latent_channels)

    def _tokenize(self, model_pixels):
        return _flat_tokens_and_grid_features(self.model, model_pixels)

    def _decode(self, visual_ids):
        return self.model.decode(visual_ids)


class _ChannelMultiplierGridAdapter(VisualTokenizerAdapter):
    """Geometry of the transformers VQ-GANs (Emu3, Chameleon) whose grid side is ``image_size`` over the product of
    their down-sampling stages (``channel_multiplier``) and whose features have ``latent_channels`` channels."""

    codebook_size_key: ClassVar[str] = "codebook_size"

    def _check_geometry(self) -> None:
        super()._check_geometry()
        ds = _downsample(self.model.config.channel_multiplier)
        if self.image_size % ds:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of the {type(self.model).__name__} "
                f"downsampling factor {ds}"
            )

    @property
    def codebook_size(self) -> int:
        return int(getattr(self.model.config, self.codebook_size_key))

    @property
    def grid_shape(self) -> tuple[int, int]:
        side = self.image_size // _downsample(self.model.config.channel_multiplier)
        return (side, side)

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.latent_channels)


class Emu3VQVAEAdapter(_ChannelMultiplierGridAdapter):
    """``transformers.Emu3VQVAE`` (the Emu3 image/video tokenizer) on single images.

    Verified on transformers 5.24: ``encode(x, image_sizes=[[S, S]] * B)`` repeats an image
    ``temporal_downsample_factor`` times in time and returns per-image token grids ``image_tokens`` (a list of
    ``[h, w]``) and ``last_hidden_state`` ``[B, 1, latent_channels, h, w]`` (the features); ``decode(tokens [B, h, w])``
    returns ``[B, C, S, S]``. Emu3 has no fixed resolution: ``image_size`` is required. Range ``[-1, 1]``.
    Emu3's latent has only ``latent_channels`` (4) channels; ``encoder_input="pixels"`` gives the prologue encoder
    more to read.
    """

    adapter_type = "emu3_vqvae"
    model_class_path = "transformers.Emu3VQVAE"
    config_marker = "emu3_vqgan"

    def _tokenize(self, model_pixels):
        batch, _, height, width = model_pixels.shape
        sizes = torch.tensor([[height, width]] * batch, device=model_pixels.device)
        out = self.model.encode(model_pixels, image_sizes=sizes)
        ids = torch.stack(list(out.image_tokens)).reshape(batch, -1)
        hidden = out.last_hidden_state  # [B, T', C, h, w]; T' = 1 for an image repeated temporal_downsample_factor times
        return ids, _grid_tokens(hidden[:, 0])

    def _decode(self, visual_ids):
        h, w = self.grid_shape
        return self.model.decode(visual_ids.reshape(-1, h, w))


class ChameleonVQVAEAdapter(_ChannelMultiplierGridAdapter):
    """``transformers.ChameleonVQVAE``: encode-only in transformers (no decoder weights or module).

    Training a Prologue-Post prologue and compact AR on it works (``tokenize`` / ``encode`` / ``features``), and so
    does stage-2 AR training on its ids; sampling images does not, because turning ids into pixels needs a decoder:
    :meth:`decode` raises ``NotImplementedError``. Range: ``ChameleonImageProcessor`` computes ``x * 0.0078 - 1``,
    i.e. ``[-1, 255 * 0.0078 - 1] = [-1, 0.989]``, the default ``input_range``. ``image_size`` defaults to
    ``config.resolution`` (512).
    """

    adapter_type = "chameleon_vqvae"
    model_class_path = "transformers.ChameleonVQVAE"
    config_marker = "chameleon_vqgan"
    default_input_range = (-1.0, 255 * 0.0078 - 1.0)
    can_decode = False
    codebook_size_key = "num_embeddings"

    def _default_image_size(self) -> int:
        return int(self.model.config.resolution)

    def _tokenize(self, model_pixels):
        return _flat_tokens_and_grid_features(self.model, model_pixels)

    def _decode(self, visual_ids):
        raise NotImplementedError(
            "ChameleonVQVAE is encode-only in transformers (it ships no decoder), so visual ids cannot be turned back "
            "into pixels: sampling and reconstruction need a decoder. Training the Prologue-Post prologue and the AR "
            "on Chameleon ids works; to sample, use a tokenizer with a decoder (e.g. JanusVQVAE, Emu3VQVAE, VQModel)."
        )


# ====================================================================================== registry / loading
VISUAL_TOKENIZER_ADAPTERS: dict[str, type[VisualTokenizerAdapter]] = {
    cls.adapter_type: cls
    for cls in (
        PrologueTokenizerAdapter,
        DiffusersVQModelAdapter,
        JanusVQVAEAdapter,
        Emu3VQVAEAdapter,
        ChameleonVQVAEAdapter,
    )
}


def register_visual_tokenizer_adapter(cls: type[VisualTokenizerAdapter]) -> type[VisualTokenizerAdapter]:
    """Register a custom adapter class under its ``adapter_type`` (usable as a decorator) so saved Prologue-Post
    checkpoints that name it can be reloaded."""
    if not (isinstance(cls, type) and issubclass(cls, VisualTokenizerAdapter)):
        raise ValueError(f"expected a VisualTokenizerAdapter subclass, got {cls!r}")
    VISUAL_TOKENIZER_ADAPTERS[cls.adapter_type] = cls
    return cls


def adapter_for_model(model: nn.Module, **kwargs) -> VisualTokenizerAdapter:
    """Wrap ``model`` in the registered adapter whose model class it is an instance of (``kwargs`` go to the
    adapter: ``image_size``, ``input_range``, ``name_or_path``).

    >>> from prologue_hf.testing import tiny_tokenizer
    >>> adapter_for_model(tiny_tokenizer()).grid_shape
    (4, 4)
    """
    if isinstance(model, VisualTokenizerAdapter):
        return model
    packages = {klass.__module__.split(".")[0] for klass in type(model).__mro__}
    for cls in VISUAL_TOKENIZER_ADAPTERS.values():
        if cls.model_class_path.split(".")[0] not in packages:
            continue  # do not import diffusers / transformers just to find out the model is not theirs
        if isinstance(model, cls.model_class()):
            return cls(model, **kwargs)
    raise ValueError(
        f"no visual-tokenizer adapter for {type(model).__name__}; supported: "
        + ", ".join(cls.model_class_path for cls in VISUAL_TOKENIZER_ADAPTERS.values())
        + " (or register_visual_tokenizer_adapter a subclass of VisualTokenizerAdapter)"
    )


def detect_adapter_type(name_or_path: str | os.PathLike, subfolder: str | None = None, **hub_kwargs) -> str:
    """The registered ``adapter_type`` for the tokenizer saved at ``name_or_path`` (local folder or Hub repo), read
    from its ``config.json`` (``model_type`` of transformers models, ``_class_name`` of diffusers models).

    Full multimodal checkpoints (Janus-Pro, Emu3, Chameleon repos) hold the VQ model *inside* a bigger model: load
    it (``JanusForConditionalGeneration.from_pretrained(repo).model.vqmodel``) and wrap or ``save_pretrained`` it.
    """
    import json

    path = os.path.join(str(name_or_path), subfolder or "", "config.json")
    if not os.path.isfile(path):
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(str(name_or_path), "config.json", subfolder=subfolder, **hub_kwargs)
    with open(path) as handle:
        config = json.load(handle)
    markers = {config.get("model_type"), config.get("_class_name")} - {None}
    for cls in VISUAL_TOKENIZER_ADAPTERS.values():
        if getattr(cls, "config_marker", None) in markers:
            return cls.adapter_type
    raise ValueError(
        f"cannot tell which adapter fits {name_or_path} (config model_type / _class_name: {sorted(markers)}); "
        f"pass the adapter type explicitly, one of {sorted(VISUAL_TOKENIZER_ADAPTERS)}. A full multimodal checkpoint "
        "(model_type 'janus', 'emu3', 'chameleon') holds its VQ model at .model.vqmodel: save that one first"
    )


def load_visual_tokenizer(
    identity: dict,
    name_or_path: str | os.PathLike,
    subfolder: str | None = None,
    *,
    verify: bool = True,
    **load_kwargs,
) -> VisualTokenizerAdapter:
    """Reload the frozen tokenizer an :meth:`VisualTokenizerAdapter.identity` describes from ``name_or_path``.

    Args:
        identity: the saved identity (``ProloguePostConfig.visual_tokenizer``).
        name_or_path: repo id or local folder of the tokenizer (``subfolder`` inside it).
        verify: check the reloaded weights' SHA-256 against the identity's (a mismatch is a ``ValueError``; with
            ``verify=False`` only a warning).
        load_kwargs: passed to the model class's ``from_pretrained`` (``cache_dir``, ``token``, ``revision``, ...).
    """
    if not isinstance(identity, dict) or "adapter_type" not in identity:
        raise ValueError(f"identity must be a dict with an 'adapter_type' (VisualTokenizerAdapter.identity()), got {identity!r}")
    adapter_type = identity["adapter_type"]
    if adapter_type not in VISUAL_TOKENIZER_ADAPTERS:
        raise ValueError(
            f"unknown visual-tokenizer adapter {adapter_type!r}; known: {sorted(VISUAL_TOKENIZER_ADAPTERS)} "
            "(register custom adapters with register_visual_tokenizer_adapter)"
        )
    cls = VISUAL_TOKENIZER_ADAPTERS[adapter_type]
    adapter = cls.from_pretrained(
        name_or_path,
        subfolder=subfolder,
        image_size=identity.get("image_size"),
        input_range=identity.get("input_range"),
        **load_kwargs,
    )
    check_identity(adapter, identity, verify_weights=verify)
    return adapter


def check_identity(adapter: VisualTokenizerAdapter, identity: dict, verify_weights: bool = True) -> None:
    """Raise ``ValueError`` unless ``adapter`` is the tokenizer ``identity`` describes.

    Shapes (adapter type, codebook size, grid, feature dim, image size, input range) must match; the model config
    differing elsewhere is a warning; a weights SHA-256 mismatch is an error when ``verify_weights`` (else a warning).
    """
    current = adapter.identity(with_weights=verify_weights and "weights_sha256" in identity)
    where = f" loaded from {adapter.name_or_path!r}" if adapter.name_or_path else ""
    for key in ("adapter_type", "codebook_size", "grid_shape", "feature_dim", "image_size", "input_range"):
        if key in identity and _as_json(identity[key]) != _as_json(current[key]):
            raise ValueError(
                f"the visual tokenizer{where} does not match the one this model was built on: {key} is "
                f"{current[key]!r}, expected {identity[key]!r}"
            )
    saved_config = identity.get("model_config") or {}
    differing = sorted(k for k in set(saved_config) | set(current["model_config"]) if _as_json(saved_config.get(k)) != _as_json(current["model_config"].get(k)))
    if differing:
        logger.warning(f"the visual tokenizer{where} has a config differing from the saved one in {differing}")
    expected_sha = identity.get("weights_sha256")
    if expected_sha and "weights_sha256" in current and current["weights_sha256"] != expected_sha:
        message = (
            f"the visual tokenizer{where} has weights {current['weights_sha256']}, but this model was built on "
            f"{expected_sha}: its prologue was trained against different visual ids"
        )
        if verify_weights:
            raise ValueError(message + " (pass verify_visual_tokenizer=False to load anyway)")
        logger.warning(message)


def _as_json(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_as_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _as_json(v) for k, v in value.items()}  # JSON turns int keys (id2label) into strings
    return value


__all__ = [
    "VisualTokenizerAdapter",
    "VisualTokenizerOutput",
    "PrologueTokenizerAdapter",
    "DiffusersVQModelAdapter",
    "JanusVQVAEAdapter",
    "Emu3VQVAEAdapter",
    "ChameleonVQVAEAdapter",
    "VISUAL_TOKENIZER_ADAPTERS",
    "register_visual_tokenizer_adapter",
    "adapter_for_model",
    "load_visual_tokenizer",
    "detect_adapter_type",
    "check_identity",
]
