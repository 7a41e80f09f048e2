"""Configuration of :class:`~prologue_hf.PrologueTokenizerModel`.

No ``from __future__ import annotations`` in the configuration modules: ``@strict`` checks a field's type on
assignment only when its annotation is a real type, not a string. So ``hidden_size="64"`` or ``image_size=32.0``
(in code or in a ``config.json``) fails at once with ``StrictDataclassFieldValidationError`` naming the field and the
expected type, as transformers' own configs do, instead of a formatting error deep inside ``__post_init__``.
"""

import dataclasses

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .remote_code import RemoteCodeConfigMixin

TOKENIZER_TYPES = ("prologue", "2d", "1d")
CODEBOOK_INITS = ("normal", "simvq")


def normalize_config_fields(config: PreTrainedConfig) -> None:
    """Shared ``__post_init__`` step of the Prologue configs.

    Real-valued fields are annotated ``float | int`` so that ``2000`` is as good as ``2000.0``; they are stored as
    floats so that a config (and the tokenizer identity hashed from it) does not depend on how a number was
    written. ``id2label`` given as a list of names becomes ``{index: name}`` (transformers only takes a dict).
    """
    for field in dataclasses.fields(config):
        if field.type == float | int:
            setattr(config, field.name, float(getattr(config, field.name)))
    if isinstance(config.id2label, (list, tuple)):
        config.id2label = dict(enumerate(config.id2label))


def default_intermediate_size(hidden_size: int) -> int:
    """The GEGLU width of a ViT block whose config leaves ``intermediate_size`` at ``None``: the official
    ``mlp_ratio`` 8/3 of ``hidden_size``, rounded."""
    return round(hidden_size * 8 / 3)


def normalize_vit_config_fields(config: PreTrainedConfig) -> None:
    """Shared ``__post_init__`` step of the configs with a Prologue ViT encoder (the tokenizer and Prologue-Post):
    :func:`normalize_config_fields`, ``rope_axes_dim`` as a list, ``intermediate_size=None`` filled with
    :func:`default_intermediate_size`, and ``codebook_init`` checked against :data:`CODEBOOK_INITS`."""
    normalize_config_fields(config)
    config.rope_axes_dim = list(config.rope_axes_dim)
    if config.intermediate_size is None:
        config.intermediate_size = default_intermediate_size(config.hidden_size)
    if config.codebook_init not in CODEBOOK_INITS:
        raise ValueError(f"codebook_init must be one of {CODEBOOK_INITS}, got {config.codebook_init!r}")


@strict
class PrologueTokenizerConfig(RemoteCodeConfigMixin, PreTrainedConfig):
    r"""Configuration of the Prologue ViT VQ tokenizer (paper section 2, appendix Table A4).

    The config is the one source of shapes: grid size, number of visual and prologue tokens, codebook sizes.

    Args:
        image_size: side of the square input image in pixels.
        patch_size: side of a square patch; the visual grid is ``image_size // patch_size`` on each side.
        num_channels: image channels (3 for RGB).
        tokenizer_type: ``"prologue"`` (2D visual tokens + ``num_prologue_tokens`` 1D prologue tokens),
            ``"2d"`` (the plain 2D baseline, no prologue) or ``"1d"`` (the 1D baseline of paper Table 3:
            ``num_latent_tokens`` learnable queries are the visual tokens; the decoder reads them with mask tokens).
        num_prologue_tokens: K, prologue tokens per image (default 16 for ``"prologue"``, 0 otherwise);
            ``num_prologue_tokens=0`` turns a ``"prologue"`` config into the ``"2d"`` baseline.
        num_latent_tokens: 1D tokens per image for ``tokenizer_type="1d"``.
        visual_codebook_size: visual codebook entries (16384 for B, 4096 for L).
        prologue_codebook_size: prologue codebook entries (1024).
        codebook_dim: ``z_dim`` of both codebooks (14 in the released models).
        prologue_temperature: Prob-STE temperature tau (0.1).
        commitment_beta: weight of the commitment term inside the VQ loss (0.25).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: encoder ViT.
        decoder_hidden_size, decoder_num_hidden_layers, decoder_num_attention_heads, decoder_intermediate_size:
            decoder ViT. ``intermediate_size=None`` means ``round(hidden * 8 / 3)`` (GEGLU, official "8/3").
        rope_axes_dim: channels per RoPE axis ``(row, col, index)``; must sum to each ViT's head dim.
        patch_rope_theta: RoPE base of patch positions (2000 in the official code).
        query_rope_theta: RoPE base of query (prologue / 1D) positions (10000).
        layer_scale_init: initial value of the residual gates (the official init scales them by 1e-5).
        codebook_init: init of both codebooks: ``"normal"`` N(0, 1) or ``"simvq"`` N(0, 1/codebook_dim) (the official
            code's). Only the scale differs and both codebooks are L2-normalised in use, but the scale sets how fast
            AdamW turns a code (a step of ~lr per element is a larger angle on a smaller vector).
        dropout, attention_dropout: dropouts of the ViT blocks.
    """

    model_type = "prologue_tokenizer"

    image_size: int = 256
    patch_size: int = 16
    num_channels: int = 3
    tokenizer_type: str = "prologue"
    num_prologue_tokens: int | None = None
    num_latent_tokens: int = 256
    visual_codebook_size: int = 16384
    prologue_codebook_size: int = 1024
    codebook_dim: int = 14
    prologue_temperature: float | int = 0.1
    commitment_beta: float | int = 0.25
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    decoder_hidden_size: int = 768
    decoder_num_hidden_layers: int = 12
    decoder_num_attention_heads: int = 12
    decoder_intermediate_size: int | None = None
    rope_axes_dim: list[int] | tuple[int, ...] = (20, 20, 24)
    patch_rope_theta: float | int = 2000.0
    query_rope_theta: float | int = 10000.0
    layer_scale_init: float | int = 1e-5
    codebook_init: str = "normal"
    dropout: float | int = 0.0
    attention_dropout: float | int = 0.0
    initializer_range: float | int = 0.02

    def __post_init__(self, **kwargs):
        normalize_vit_config_fields(self)
        if self.decoder_intermediate_size is None:
            self.decoder_intermediate_size = default_intermediate_size(self.decoder_hidden_size)
        if self.tokenizer_type not in TOKENIZER_TYPES:
            raise ValueError(f"tokenizer_type must be one of {TOKENIZER_TYPES}, got {self.tokenizer_type!r}")
        if self.num_prologue_tokens is None:
            self.num_prologue_tokens = 16 if self.tokenizer_type == "prologue" else 0
        if self.tokenizer_type == "prologue" and self.num_prologue_tokens == 0:
            # K = 0 is the paper's plain 2D baseline (Fig. 5, Table 3).
            self.tokenizer_type = "2d"
        if self.tokenizer_type != "prologue" and self.num_prologue_tokens != 0:
            raise ValueError(
                f"num_prologue_tokens must be 0 for tokenizer_type={self.tokenizer_type!r}, "
                f"got {self.num_prologue_tokens}"
            )
        if self.num_prologue_tokens < 0:
            raise ValueError(f"num_prologue_tokens must be >= 0, got {self.num_prologue_tokens}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        for prefix, dim, heads in (
            ("", self.hidden_size, self.num_attention_heads),
            ("decoder_", self.decoder_hidden_size, self.decoder_num_attention_heads),
        ):
            if dim % heads:
                raise ValueError(f"{prefix}hidden_size ({dim}) must be divisible by {prefix}num_attention_heads ({heads})")
            if sum(self.rope_axes_dim) != dim // heads or any(a % 2 for a in self.rope_axes_dim):
                raise ValueError(
                    f"rope_axes_dim {self.rope_axes_dim} must be even numbers summing to the {prefix or 'encoder '}"
                    f"head dim {dim // heads}"
                )
        super().__post_init__(**kwargs)

    @property
    def grid_size(self) -> int:
        """Patches per side of the image."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches per image (N = 256 at 256px / patch 16)."""
        return self.grid_size**2

    @property
    def patch_dim(self) -> int:
        """Values per patch, ``patch_size**2 * num_channels``."""
        return self.patch_size**2 * self.num_channels

    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens per image: the grid for ``"2d"``/``"prologue"``, ``num_latent_tokens`` for ``"1d"``."""
        return self.num_latent_tokens if self.tokenizer_type == "1d" else self.num_patches

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PrologueTokenizerConfig":
        """Paper presets (appendix Table A4): ``"B"`` (86M enc / 86M dec, 16K visual codes) and ``"L"``
        (86M enc / 305M dec, 4K visual codes). Both: 256px, patch 16, K=16, prologue codebook 1024.

        >>> PrologueTokenizerConfig.from_preset("B").visual_codebook_size
        16384
        """
        presets = {
            "B": dict(visual_codebook_size=16384),
            "L": dict(
                visual_codebook_size=4096,
                decoder_hidden_size=1024,
                decoder_num_hidden_layers=24,
                decoder_num_attention_heads=16,
            ),
        }
        if name not in presets:
            raise ValueError(f"unknown tokenizer preset {name!r}; expected one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})


__all__ = ["PrologueTokenizerConfig"]
