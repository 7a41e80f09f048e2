"""PrologueTokenizerModel: ViT VQ tokenizer with 2D visual tokens and 1D prologue tokens (paper section 2).

Data flow (``tokenizer_type="prologue"``)::

    pixels [B,3,H,W] -> patchify [B,N,p*p*3] -> Linear -> concat K learnable queries -> ViT (bidirectional)
        h[:, :N]  -> visual quantizer  (L2 VQ, STE)      -> visual_ids   [B,N] -> decoder -> pixels
        h[:, N:]  -> prologue quantizer (Prob-STE, tau)  -> prologue_ids [B,K] (+ soft one-hot p~ for the AR)

The decoder sees the visual codes only; prologue tokens never reach it. The encoder has no final norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput, logging

from .configuration_prologue_tokenizer import PrologueTokenizerConfig
from .layers import PrologueRMSNorm, ViTBlock, multi_axis_rope_angles
from .quantizers import L2VectorQuantizer, ProbSTEQuantizer, QuantizerOutput
from .strict_loading import StrictLoadingMixin

logger = logging.get_logger(__name__)

# How far outside [-1, 1] pixel values may lie before encode refuses them. Exact inputs (preprocess: x / 127.5 - 1)
# need no slack and bf16 rounding adds at most 2**-8, but resampling does: bicubic and Lanczos kernels have negative
# lobes and overshoot a sharp black/white edge (measured on a [-1, 1] step: F.interpolate bicubic x2 1.211, PIL
# LANCZOS 1.206, PIL BICUBIC 1.141). 0.25 keeps those and still refuses what ruins the ids: [0, 255] inputs (max far
# above 1) and ImageNet mean/std-normalised ones ([-2.1, 2.6]).
PIXEL_RANGE_TOLERANCE = 0.25
# 16-bit PIL modes (16-bit grayscale PNG / TIFF): full scale 65535. convert("RGB") would clip them to 255, i.e. white.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def check_pixel_range(pixel_values: torch.Tensor, name: str = "pixel_values", synchronize: bool = True) -> None:
    """Raise ``ValueError`` unless the float tensor ``pixel_values`` is non-empty and every value is finite and within
    ``[-1, 1]`` (plus :data:`PIXEL_RANGE_TOLERANCE` for resampling overshoot); the message gives the range seen and
    the conversion.

    ``synchronize=False`` (off the CPU) queues a device-side assertion with the same rule instead of reading the
    extremes on the host, so a forward does not wait for the device (as the AR's id check). On the host path a batch
    that lies wholly in ``[0, 1]`` gets a warning: it is legal but is what torchvision's ``ToTensor`` produces.
    """
    if not pixel_values.numel():
        raise ValueError(f"{name} is empty (shape {list(pixel_values.shape)}): nothing to encode")
    limit = 1.0 + PIXEL_RANGE_TOLERANCE
    conversions = (
        "convert [0, 1] images (torchvision ToTensor) with x * 2 - 1, [0, 255] floats with x / 127.5 - 1, uint8 "
        "images with PrologueTokenizerModel.preprocess, and clamp resized images with x.clamp(-1, 1)"
    )
    if not synchronize:
        in_range = torch.isfinite(pixel_values).all() & (pixel_values.abs() <= limit).all()
        torch._assert_async(in_range, f"{name} must be finite and lie in [-1, 1] (+-{PIXEL_RANGE_TOLERANCE}); {conversions}")
        return
    finite = torch.isfinite(pixel_values)
    if not bool(finite.all()):
        raise ValueError(
            f"{name} has {int((~finite).sum())} NaN/Inf values of {pixel_values.numel()}; an image with one of them "
            "would get meaningless ids"
        )
    low, high = (float(v) for v in pixel_values.aminmax())
    if low < -limit or high > limit:
        raise ValueError(
            f"{name} must lie in [-1, 1] (up to {PIXEL_RANGE_TOLERANCE} beyond, for resampling overshoot); got values "
            f"in [{low:.4g}, {high:.4g}]. {conversions[0].upper()}{conversions[1:]}."
        )
    if low >= 0.0:
        logger.warning_once(
            f"{name} all lie in [0, {high:.3g}]: fine for a bright image, but [0, 1] images (torchvision ToTensor) "
            "must be converted with x * 2 - 1 first"
        )


def _pil_to_array(image: PIL.Image.Image) -> tuple[np.ndarray, float]:
    """A PIL image -> ``[H, W, 3]`` unsigned integer array and its full-scale value (255 or 65535)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        gray = np.asarray(image).astype(np.uint16)  # native byte order whatever the file's
        return np.repeat(gray[..., None], 3, axis=-1), 65535.0
    if image.mode in ("F", "I"):
        # No fixed range: a float TIFF may hold [0, 1] or [0, 255], an "I" image 8- or 16-bit data. PIL's own
        # convert("RGB") clips to [0, 255], which turns a [0, 1] image black.
        kind = "32-bit float" if image.mode == "F" else "32-bit integer"
        raise ValueError(
            f"images: PIL mode {image.mode!r} ({kind}) has no fixed value range, so it is not guessed; convert it to "
            "8 bits first, e.g. PIL.Image.fromarray((np.asarray(image) * 255).round().astype(np.uint8)) for values in "
            "[0, 1], or .clip(0, 255).round().astype(np.uint8) for values in [0, 255]"
        )
    return np.asarray(image.convert("RGB")), 255.0


@dataclass
class PrologueTokenizerEncoderOutput(ModelOutput):
    """Output of :meth:`PrologueTokenizerModel.encode`.

    Attributes:
        visual_ids: ``[B, N]`` visual code ids in raster order (N = grid**2, or ``num_latent_tokens`` for 1D).
        prologue_ids: ``[B, K]`` prologue code ids, or None when the tokenizer has no prologue.
        prologue_soft_onehot: ``[B, K, prologue_codebook_size]`` Prob-STE one-hot ``p~`` (hard forward value,
            softmax gradient), or None.
        visual_quantized: ``[B, N, codebook_dim]`` straight-through visual codes (the decoder input).
        prologue_quantized: ``[B, K, codebook_dim]`` Prob-STE prologue codes, or None.
        visual_features: ``[B, N, codebook_dim]`` L2-normalised pre-quantisation visual features.
        prologue_features: ``[B, K, codebook_dim]`` L2-normalised pre-quantisation prologue features, or None.
        visual_logits / prologue_logits: cosine similarities to each codebook entry.
        encoder_hidden_states: ``[B, N_patches + K, hidden]`` encoder output (patch positions first).
        quantizer_loss: scalar visual VQ loss (codebook + beta * commitment).
    """

    visual_ids: torch.Tensor | None = None
    prologue_ids: torch.Tensor | None = None
    prologue_soft_onehot: torch.Tensor | None = None
    visual_quantized: torch.Tensor | None = None
    prologue_quantized: torch.Tensor | None = None
    visual_features: torch.Tensor | None = None
    prologue_features: torch.Tensor | None = None
    visual_logits: torch.Tensor | None = None
    prologue_logits: torch.Tensor | None = None
    encoder_hidden_states: torch.Tensor | None = None
    quantizer_loss: torch.Tensor | None = None


@dataclass
class PrologueTokenizerDecoderOutput(ModelOutput):
    """Output of :meth:`PrologueTokenizerModel.decode`: ``pixel_values`` ``[B, C, H, W]`` in about ``[-1, 1]``."""

    pixel_values: torch.Tensor | None = None


@dataclass
class PrologueTokenizerOutput(PrologueTokenizerEncoderOutput):
    """Output of :meth:`PrologueTokenizerModel.forward`: the encoder output plus ``reconstruction`` ``[B, C, H, W]``."""

    reconstruction: torch.Tensor | None = None


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, (H/p)*(W/p), p*p*C]`` with channel fastest inside a patch (official layout)."""
    batch, channels, height, width = pixel_values.shape
    x = pixel_values.reshape(batch, channels, height // patch_size, patch_size, width // patch_size, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, -1, patch_size * patch_size * channels)


def unpatchify(patches: torch.Tensor, patch_size: int, grid_size: int) -> torch.Tensor:
    """Inverse of :func:`patchify` for a square grid: ``[B, grid**2, p*p*C] -> [B, C, H, W]``."""
    batch = patches.shape[0]
    x = patches.reshape(batch, grid_size, grid_size, patch_size, patch_size, -1)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(batch, -1, grid_size * patch_size, grid_size * patch_size)


def _grid_positions(grid_size: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten(), torch.zeros(grid_size**2, dtype=torch.long)], dim=-1)


def _sequence_positions(length: int) -> torch.Tensor:
    zeros = torch.zeros(length, dtype=torch.long)
    return torch.stack([zeros, zeros, torch.arange(length)], dim=-1)


class _ViTStack(nn.Module):
    """Input projection, token layout and RoPE tables shared by the encoder and the decoder."""

    def __init__(
        self,
        config: PrologueTokenizerConfig,
        input_dim: int,
        dim: int,
        num_layers: int,
        num_heads: int,
        mlp_hidden_dim: int,
        num_grid_tokens: int,
        num_sequence_tokens: int,
        grid_first: bool,
    ):
        super().__init__()
        self.input_layer = nn.Linear(input_dim, dim)
        self.layers = nn.ModuleList(
            ViTBlock(dim, num_heads, mlp_hidden_dim, True, config.dropout, config.attention_dropout, config.layer_scale_init)
            for _ in range(num_layers)
        )
        self._rope_layout = (config.grid_size, num_grid_tokens, num_sequence_tokens, grid_first)
        self._rope_thetas = (float(config.patch_rope_theta), float(config.query_rope_theta))
        self._rope_axes_dim = list(config.rope_axes_dim)
        self._rope_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # device -> (cos, sin)
        self.gradient_checkpointing = False

    def rope_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` float32 ``[L, head_dim/2]`` for this stack's token layout: grid tokens at ``(row, col, 0)``
        with the patch RoPE base, sequence tokens (queries / 1D latents) at ``(0, 0, l)`` with the query base.

        Built on first use per device (on the CPU in float64) and kept in a plain dict rather than as buffers:
        non-persistent buffers are not restored by ``from_pretrained``'s meta-device load.
        """
        key = str(device)
        if key not in self._rope_cache:
            self._rope_cache[key] = self._build_rope_tables(device)
        return self._rope_cache[key]

    def _build_rope_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        grid_size, num_grid, num_seq, grid_first = self._rope_layout
        patch_theta, query_theta = self._rope_thetas
        with torch.device("cpu"):
            grid = (_grid_positions(grid_size)[:num_grid], torch.full((num_grid,), patch_theta))
            seq = (_sequence_positions(num_seq), torch.full((num_seq,), query_theta))
            first, second = (grid, seq) if grid_first else (seq, grid)
            angles = multi_axis_rope_angles(
                torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]]), self._rope_axes_dim
            )
        return angles.cos().float().to(device), angles.sin().float().to(device)

    def run_layers(self, x: torch.Tensor) -> torch.Tensor:
        rope_cos, rope_sin = self.rope_tables(x.device)
        for layer in self.layers:
            x = layer(x, rope_cos, rope_sin)
        return x


class PrologueViTEncoder(_ViTStack):
    """Bidirectional ViT over ``[patches; queries]``; no final norm (official ``out_norm=False``)."""

    def __init__(self, config: PrologueTokenizerConfig):
        num_queries = config.num_prologue_tokens if config.tokenizer_type == "prologue" else 0
        if config.tokenizer_type == "1d":
            num_queries = config.num_latent_tokens
        super().__init__(
            config,
            config.patch_dim,
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.intermediate_size,
            config.num_patches,
            num_queries,
            grid_first=True,
        )
        self.num_queries = num_queries
        self.queries = nn.Parameter(torch.zeros(1, num_queries, config.hidden_size)) if num_queries else None

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """``patches`` ``[B, N, patch_dim]`` -> hidden states ``[B, N + num_queries, hidden]``."""
        x = self.input_layer(patches)
        if self.queries is not None:
            x = torch.cat([x, self.queries.expand(x.shape[0], -1, -1).to(x.dtype)], dim=1)
        return self.run_layers(x)


class PrologueViTDecoder(_ViTStack):
    """ViT from visual codes to patches: ``Linear -> blocks -> RMSNorm -> Linear -> unpatchify``.

    2D: one token per grid cell. 1D: the latent codes followed by one learnable mask token per grid cell; the
    patches are read from the mask tokens.
    """

    def __init__(self, config: PrologueTokenizerConfig):
        is_1d = config.tokenizer_type == "1d"
        super().__init__(
            config,
            config.codebook_dim,
            config.decoder_hidden_size,
            config.decoder_num_hidden_layers,
            config.decoder_num_attention_heads,
            config.decoder_intermediate_size,
            config.num_patches,
            config.num_latent_tokens if is_1d else 0,
            grid_first=False,
        )
        self.grid_size = config.grid_size
        self.patch_size = config.patch_size
        self.mask_tokens = nn.Parameter(torch.zeros(1, config.num_patches, config.decoder_hidden_size)) if is_1d else None
        self.norm = PrologueRMSNorm(config.decoder_hidden_size)
        self.output_layer = nn.Linear(config.decoder_hidden_size, config.patch_dim)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes`` ``[B, num_visual_tokens, codebook_dim]`` -> pixels ``[B, C, H, W]``."""
        x = self.input_layer(codes)
        if self.mask_tokens is not None:
            x = torch.cat([x, self.mask_tokens.expand(x.shape[0], -1, -1).to(x.dtype)], dim=1)
        x = self.run_layers(x)[:, -self.grid_size**2 :]
        return unpatchify(self.output_layer(self.norm(x)), self.patch_size, self.grid_size)


class PrologueTokenizerPreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    config_class = PrologueTokenizerConfig
    config: PrologueTokenizerConfig
    base_model_prefix = "tokenizer"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ViTBlock"]
    _strict_loading_fields = ("num_hidden_layers", "decoder_num_hidden_layers")

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):  # the codebooks; "simvq" is the official N(0, 1/z_dim)
            simvq = getattr(self.config, "codebook_init", "normal") == "simvq"
            nn.init.normal_(module.weight, std=module.weight.shape[-1] ** -0.5 if simvq else 1.0)
        elif isinstance(module, PrologueRMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, ViTBlock):
            nn.init.constant_(module.gate_attn, self.config.layer_scale_init)
            nn.init.constant_(module.gate_mlp, self.config.layer_scale_init)
        elif isinstance(module, PrologueViTEncoder) and module.queries is not None:
            nn.init.trunc_normal_(module.queries, std=std)
        elif isinstance(module, PrologueViTDecoder) and module.mask_tokens is not None:
            nn.init.trunc_normal_(module.mask_tokens, std=std)


class PrologueTokenizerModel(PrologueTokenizerPreTrainedModel):
    """The Prologue tokenizer (encoder, visual and prologue quantizers, decoder).

    >>> from prologue_hf import PrologueTokenizerConfig, PrologueTokenizerModel
    >>> config = PrologueTokenizerConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
    ...     num_attention_heads=4, decoder_hidden_size=64, decoder_num_hidden_layers=2,
    ...     decoder_num_attention_heads=4, rope_axes_dim=[4, 6, 6], visual_codebook_size=64,
    ...     prologue_codebook_size=16, num_prologue_tokens=4, codebook_dim=8)
    >>> tokenizer = PrologueTokenizerModel(config).eval()
    >>> out = tokenizer.encode(torch.zeros(2, 3, 32, 32))
    >>> out.visual_ids.shape, out.prologue_ids.shape
    (torch.Size([2, 16]), torch.Size([2, 4]))
    >>> tokenizer.decode(out.visual_ids).pixel_values.shape
    torch.Size([2, 3, 32, 32])
    """

    def __init__(self, config: PrologueTokenizerConfig):
        super().__init__(config)
        self.encoder = PrologueViTEncoder(config)
        self.visual_quantizer = L2VectorQuantizer(
            config.hidden_size, config.codebook_dim, config.visual_codebook_size, config.commitment_beta
        )
        self.prologue_quantizer = (
            ProbSTEQuantizer(
                config.hidden_size, config.codebook_dim, config.prologue_codebook_size, config.prologue_temperature
            )
            if config.num_prologue_tokens
            else None
        )
        self.decoder = PrologueViTDecoder(config)
        self.post_init()

    # ------------------------------------------------------------------ input checks
    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        c = self.config
        expected = (c.num_channels, c.image_size, c.image_size)
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be a tensor of shape [B, {', '.join(map(str, expected))}]")
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a float tensor in [-1, 1], got dtype {pixel_values.dtype}; "
                "convert uint8 images with PrologueTokenizerModel.preprocess"
            )
        if tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape [B, {', '.join(map(str, expected))}] "
                f"(channels, image_size, image_size), got {list(pixel_values.shape)}"
            )
        check_pixel_range(pixel_values, synchronize=pixel_values.device.type == "cpu")

    def _check_visual_ids(self, visual_ids: torch.Tensor) -> torch.Tensor:
        """Checked ``visual_ids`` as ``long``: any integer dtype is accepted (pretokenized datasets store int16)."""
        n = self.config.num_visual_tokens
        if not isinstance(visual_ids, torch.Tensor):
            raise ValueError(f"visual_ids must be a torch tensor [B, {n}], got {type(visual_ids).__name__}")
        if visual_ids.ndim != 2 or visual_ids.shape[1] != n:
            raise ValueError(f"visual_ids must have shape [B, {n}], got {list(visual_ids.shape)}")
        if visual_ids.is_floating_point() or visual_ids.is_complex() or visual_ids.dtype == torch.bool:
            raise ValueError(f"visual_ids must be an integer tensor, got dtype {visual_ids.dtype}")
        if not visual_ids.shape[0]:
            raise ValueError("visual_ids is an empty batch (B = 0)")
        return visual_ids.long()

    # ------------------------------------------------------------------ encode / decode
    def encode(self, pixel_values: torch.Tensor) -> PrologueTokenizerEncoderOutput:
        """Tokenize images.

        Args:
            pixel_values: ``[B, C, H, W]`` float images in ``[-1, 1]`` (see :meth:`preprocess`), any float dtype
                (cast to the model's). NaN/Inf, or values more than :data:`PIXEL_RANGE_TOLERANCE` outside
                ``[-1, 1]``, raise ``ValueError`` (see :func:`check_pixel_range`).

        Returns:
            :class:`PrologueTokenizerEncoderOutput` with ``visual_ids`` ``[B, N]`` and ``prologue_ids`` ``[B, K]``.
        """
        self._check_pixel_values(pixel_values)
        pixel_values = pixel_values.to(self.encoder.input_layer.weight.dtype)
        hidden = self.encoder(patchify(pixel_values, self.config.patch_size))
        num_patches = self.config.num_patches
        if self.config.tokenizer_type == "1d":
            visual: QuantizerOutput = self.visual_quantizer(hidden[:, num_patches:])
        else:
            visual = self.visual_quantizer(hidden[:, :num_patches])
        prologue = self.prologue_quantizer(hidden[:, num_patches:]) if self.prologue_quantizer is not None else None
        return PrologueTokenizerEncoderOutput(
            visual_ids=visual.ids,
            prologue_ids=prologue.ids if prologue else None,
            prologue_soft_onehot=prologue.soft_onehot if prologue else None,
            visual_quantized=visual.quantized,
            prologue_quantized=prologue.quantized if prologue else None,
            visual_features=visual.normalized_features,
            prologue_features=prologue.normalized_features if prologue else None,
            visual_logits=visual.logits,
            prologue_logits=prologue.logits if prologue else None,
            encoder_hidden_states=hidden,
            quantizer_loss=visual.loss,
        )

    def decode_codes(self, visual_codes: torch.Tensor) -> torch.Tensor:
        """Decode code vectors ``[B, N, codebook_dim]`` (e.g. the STE output) to pixels ``[B, C, H, W]``."""
        return self.decoder(visual_codes.to(self.decoder.input_layer.weight.dtype))

    def decode(self, visual_ids: torch.Tensor) -> PrologueTokenizerDecoderOutput:
        """Decode visual ids ``[B, N]`` (any integer dtype) to ``pixel_values`` ``[B, C, H, W]`` (about ``[-1, 1]``,
        not clamped)."""
        visual_ids = self._check_visual_ids(visual_ids)
        return PrologueTokenizerDecoderOutput(pixel_values=self.decode_codes(self.visual_quantizer.lookup(visual_ids)))

    def forward(self, pixel_values: torch.Tensor) -> PrologueTokenizerOutput:
        """Encode, quantize and reconstruct ``pixel_values`` ``[B, C, H, W]`` (the training forward).

        Returns the encoder output plus ``reconstruction``; the reconstruction / GAN / AR losses live in the
        trainers, only the quantizer's own VQ loss is returned here.
        """
        encoded = self.encode(pixel_values)
        reconstruction = self.decode_codes(encoded.visual_quantized)
        return PrologueTokenizerOutput(**encoded, reconstruction=reconstruction)

    # ------------------------------------------------------------------ image helpers
    @staticmethod
    def preprocess(images: PIL.Image.Image | list | np.ndarray | torch.Tensor) -> torch.Tensor:
        """PIL image(s), uint8 arrays ``[H, W, C]``/``[B, H, W, C]`` or uint8 tensors ``[B, C, H, W]`` -> float
        ``[B, C, H, W]`` in ``[-1, 1]`` (``x / 127.5 - 1``, as the official code). No resizing is done.

        PIL images are converted to RGB; 16-bit ones (``"I;16"``, e.g. 16-bit grayscale PNGs) are scaled from
        ``[0, 65535]``. Modes without a fixed range (``"F"`` float, ``"I"`` 32-bit) raise ``ValueError``.
        """
        if isinstance(images, PIL.Image.Image):
            images = [images]
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("images is an empty list")
            arrays = [_pil_to_array(img) if isinstance(img, PIL.Image.Image) else (np.asarray(img), 255.0) for img in images]
            if any(a.dtype != np.uint8 for a, scale in arrays if scale == 255.0):
                raise ValueError("images: arrays in a list must be uint8 [H, W, C] (0..255)")
            shapes = sorted({a.shape for a, _ in arrays})
            if len(shapes) > 1:
                raise ValueError(f"images must all have the same size and channels to form a batch, got shapes {shapes}")
            if any(scale != 255.0 for _, scale in arrays):  # 16-bit images: each scaled by its own full scale
                return torch.stack(
                    [torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1) / (scale / 2) - 1.0 for a, scale in arrays]
                )
            images = np.stack([a for a, _ in arrays])
        if isinstance(images, np.ndarray):
            if images.ndim == 3:
                images = images[None]
            images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError("images must be PIL images, uint8 arrays [B, H, W, C] or uint8 tensors [B, C, H, W]")
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (0..255), got {images.dtype}; float inputs are already pixel_values")
        return images.float() / 127.5 - 1.0

    @staticmethod
    def postprocess(pixel_values: torch.Tensor, output_type: str = "pil") -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
        """``[B, C, H, W]`` in ``[-1, 1]`` -> ``"pil"`` list, ``"np"`` float ``[B, H, W, C]`` in ``[0, 1]``,
        ``"pt"`` float ``[B, C, H, W]`` in ``[0, 1]`` or ``"uint8"`` tensor ``[B, C, H, W]``.

        Values outside ``[-1, 1]`` are clamped (the decoder output is not); NaN/Inf raise ``ValueError`` rather than
        becoming black or white pixels.
        """
        if output_type not in ("pil", "np", "pt", "uint8"):
            raise ValueError(f"output_type must be one of 'pil', 'np', 'pt', 'uint8'; got {output_type!r}")
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or not pixel_values.is_floating_point():
            described = (
                f"{pixel_values.dtype} {list(pixel_values.shape)}"
                if isinstance(pixel_values, torch.Tensor)
                else type(pixel_values).__name__
            )
            raise ValueError(f"pixel_values must be a float tensor [B, C, H, W] in [-1, 1], got {described}")
        finite = torch.isfinite(pixel_values)
        if not bool(finite.all()):
            raise ValueError(
                f"pixel_values has {int((~finite).sum())} NaN/Inf values (a diverged model or a bad dtype cast?); "
                "refusing to turn them into black or white pixels"
            )
        if output_type == "uint8":
            return (((pixel_values.float() + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        if output_type == "pil" and pixel_values.shape[1] == 1:  # diffusers squeezes every unit axis of a 1-channel image
            array = ((pixel_values.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu().numpy()
            return [PIL.Image.fromarray((img[..., 0] * 255.0).round().astype(np.uint8)) for img in array]
        from diffusers.image_processor import VaeImageProcessor  # deferred: diffusers is slow to import

        # the same [-1, 1] -> [0, 1] clamp, layouts and uint8 rounding as diffusers pipelines' VAE outputs
        return VaeImageProcessor(do_normalize=True).postprocess(pixel_values.float(), output_type=output_type)

    def codebook_usage(self, ids: torch.Tensor, codebook: str = "visual") -> dict[str, float]:
        """Fraction of codes used and perplexity of the code histogram of ``ids`` (integer, any shape, raw codebook
        ids in ``[0, codebook size)``, not combined-vocabulary ids); ``codebook`` is ``"visual"`` or ``"prologue"``."""
        if codebook not in ("visual", "prologue"):
            raise ValueError(f"codebook must be 'visual' or 'prologue', got {codebook!r}")
        if codebook == "prologue" and not self.config.num_prologue_tokens:
            raise ValueError(f"codebook='prologue': this {self.config.tokenizer_type!r} tokenizer has no prologue tokens")
        size = self.config.visual_codebook_size if codebook == "visual" else self.config.prologue_codebook_size
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            described = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"ids must be an integer tensor of {codebook} code ids, got {described}")
        if not ids.numel():
            raise ValueError("ids is empty: there is no code histogram to measure")
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= size:
            raise ValueError(
                f"ids must lie in [0, {size}) (the {codebook} codebook); got values in [{low}, {high}]. Combined-vocabulary "
                "ids must be split first (PrologueVocabulary)"
            )
        counts = torch.bincount(ids.flatten().long(), minlength=size).float()
        probs = counts / counts.sum().clamp_min(1)
        entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
        return {"usage": float((counts > 0).float().mean()), "perplexity": float(entropy.exp())}


__all__ = [
    "PrologueTokenizerModel",
    "PrologueTokenizerPreTrainedModel",
    "PrologueTokenizerOutput",
    "PrologueTokenizerEncoderOutput",
    "PrologueTokenizerDecoderOutput",
    "patchify",
    "unpatchify",
    "check_pixel_range",
    "PIXEL_RANGE_TOLERANCE",
]
