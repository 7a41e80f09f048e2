"""Configuration of :class:`~prologue_hf.ProloguePostModel` (Prologue-Post, paper section 2.3).

No ``from __future__ import annotations``: ``@strict`` then checks every field's type on assignment (see
:mod:`~prologue_hf.models.configuration_prologue_tokenizer`).
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_prologue_tokenizer import PrologueTokenizerConfig, normalize_vit_config_fields
from .remote_code import RemoteCodeConfigMixin

ENCODER_INPUTS = ("features", "pixels")


@strict
class ProloguePostConfig(RemoteCodeConfigMixin, PreTrainedConfig):
    r"""Configuration of a Prologue-Post prologue tokenizer: a prologue encoder with K learnable queries and a Prob-STE
    quantizer over a *frozen* visual tokenizer.

    The official Prologue-Post (appendix D, Table A1) reads the frozen encoder's output with a 10-layer, 512-wide
    encoder (keys ``semantic_enc.*``); those are the defaults. The visual fields describe the frozen tokenizer and
    are filled from its adapter by :meth:`~prologue_hf.ProloguePostModel.from_visual_tokenizer`; the AR and the
    pipeline read them (``visual_codebook_size``, ``num_visual_tokens``) exactly as for a
    :class:`~prologue_hf.PrologueTokenizerConfig`.

    Args:
        visual_tokenizer: the frozen tokenizer's location-free identity
            (:meth:`~prologue_hf.models.visual_tokenizers.VisualTokenizerAdapter.identity`: adapter type, model class,
            the model's own config, image size, input range, weights SHA-256).
        visual_tokenizer_name_or_path: repo id or local folder the frozen tokenizer is reloaded from; ``None`` when
            its weights are stored inside the checkpoint (``visual_tokenizer_subfolder`` of the checkpoint folder).
        visual_tokenizer_subfolder: subfolder of ``visual_tokenizer_name_or_path`` (or of the checkpoint).
        encoder_input: what the prologue encoder reads: ``"features"`` (the frozen encoder output ``[B, N, D]`` on
            the visual grid, official) or ``"pixels"`` (patchified images, ``patch_size``).
        image_size, num_channels: input images (the frozen tokenizer's).
        patch_size: patch side of the ``"pixels"`` encoder input.
        visual_codebook_size: V of the frozen tokenizer.
        visual_grid_size: side of the frozen tokenizer's (square) grid; ``num_visual_tokens = visual_grid_size**2``.
        visual_feature_dim: D of the frozen features.
        num_prologue_tokens: K (16 in the paper).
        prologue_codebook_size: prologue codebook entries (1024).
        codebook_dim: ``z_dim`` of the prologue codebook (14).
        prologue_temperature: Prob-STE temperature tau (0.1, the released models).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: the prologue encoder ViT
            (``intermediate_size=None`` is ``round(hidden * 8 / 3)``, GEGLU).
        rope_axes_dim: RoPE channels per axis ``(row, col, index)``; sums to the head dim.
        patch_rope_theta, query_rope_theta: RoPE bases of grid positions (2000) and queries (10000), as the tokenizer.
        layer_scale_init: initial value of the residual gates (official init 1e-5).
        codebook_init: init of the prologue codebook: ``"normal"`` N(0, 1) or ``"simvq"`` N(0, 1/codebook_dim) (the
            official ``SemanticQuantizer.codebook_init``); as :class:`PrologueTokenizerConfig`.
        dropout, attention_dropout: ViT dropouts.
    """

    model_type = "prologue_post"

    visual_tokenizer: dict | None = None
    visual_tokenizer_name_or_path: str | None = None
    visual_tokenizer_subfolder: str | None = None
    encoder_input: str = "features"
    image_size: int = 256
    num_channels: int = 3
    patch_size: int = 16
    visual_codebook_size: int = 16384
    visual_grid_size: int = 16
    visual_feature_dim: int = 768
    num_prologue_tokens: int = 16
    prologue_codebook_size: int = 1024
    codebook_dim: int = 14
    prologue_temperature: float | int = 0.1
    hidden_size: int = 512
    num_hidden_layers: int = 10
    num_attention_heads: int = 8
    intermediate_size: int | None = None
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
        if self.encoder_input not in ENCODER_INPUTS:
            raise ValueError(f"encoder_input must be one of {ENCODER_INPUTS}, got {self.encoder_input!r}")
        if self.num_prologue_tokens < 1:
            raise ValueError(f"num_prologue_tokens must be >= 1 (Prologue-Post adds prologue tokens), got {self.num_prologue_tokens}")
        for name in ("visual_codebook_size", "visual_grid_size", "visual_feature_dim", "prologue_codebook_size", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.encoder_input == "pixels" and self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.visual_tokenizer is not None and not isinstance(self.visual_tokenizer.get("adapter_type"), str):
            raise ValueError("visual_tokenizer must be an adapter identity dict with an 'adapter_type'")
        # The encoder view validates heads / RoPE layout with the tokenizer's own messages.
        self.encoder_config()
        super().__post_init__(**kwargs)

    @property
    def num_visual_tokens(self) -> int:
        """N = visual_grid_size**2 visual ids per image (raster order)."""
        return self.visual_grid_size**2

    @property
    def tokenizer_type(self) -> str:
        """``"prologue"``: the ids this model emits have the Prologue layout (K prologue + N visual)."""
        return "prologue"

    def encoder_config(self) -> PrologueTokenizerConfig:
        """The prologue encoder as a :class:`PrologueTokenizerConfig` (so :class:`PrologueViTEncoder` is reused).

        ``"features"``: the grid cells are "patches" of size 1 with ``visual_feature_dim`` channels
        (``image_size = visual_grid_size``, ``patch_size = 1``), so the grid RoPE is ``(row, col, 0)`` over the
        frozen tokenizer's grid. ``"pixels"``: ordinary ``patch_size`` patches of the image. Queries sit at
        ``(0, 0, l)`` after the grid tokens in both cases (the official concat layout).
        """
        if self.encoder_input == "features":
            geometry = dict(image_size=self.visual_grid_size, patch_size=1, num_channels=self.visual_feature_dim)
        else:
            geometry = dict(image_size=self.image_size, patch_size=self.patch_size, num_channels=self.num_channels)
        return PrologueTokenizerConfig(
            **geometry,
            tokenizer_type="prologue",
            num_prologue_tokens=self.num_prologue_tokens,
            visual_codebook_size=self.visual_codebook_size,
            prologue_codebook_size=self.prologue_codebook_size,
            codebook_dim=self.codebook_dim,
            prologue_temperature=self.prologue_temperature,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            # no decoder here; mirror the encoder so the shared head-dim / RoPE validation passes
            decoder_hidden_size=self.hidden_size,
            decoder_num_hidden_layers=0,
            decoder_num_attention_heads=self.num_attention_heads,
            rope_axes_dim=self.rope_axes_dim,
            patch_rope_theta=self.patch_rope_theta,
            query_rope_theta=self.query_rope_theta,
            layer_scale_init=self.layer_scale_init,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            initializer_range=self.initializer_range,
        )


__all__ = ["ProloguePostConfig", "ENCODER_INPUTS"]
