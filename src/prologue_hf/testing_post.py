"""Tiny random-init frozen tokenizers and Prologue-Post models for tests and docs (nothing is downloaded).

Every HF VQ builder gives a 16px tokenizer with a 4x4 grid (16 ids) and 32 codes, so one tiny AR config fits them
all; the builders are deterministic for a given ``seed``. The transformers VQGANs hard-code 32-group GroupNorms, so
their channel counts are multiples of 32.
"""

from __future__ import annotations

import torch

from .models.configuration_prologue_post import ProloguePostConfig
from .models.modeling_prologue_post import ProloguePostModel
from .models.visual_tokenizers import (
    ChameleonVQVAEAdapter,
    DiffusersVQModelAdapter,
    Emu3VQVAEAdapter,
    JanusVQVAEAdapter,
    PrologueTokenizerAdapter,
    VisualTokenizerAdapter,
)
from .testing import tiny_tokenizer

TINY_IMAGE_SIZE = 16
TINY_CODEBOOK_SIZE = 32
# Prologue encoder of the tiny Post models: width 32, 1 layer, 2 heads (head dim 16 = 4 + 6 + 6).
TINY_POST_KWARGS = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    rope_axes_dim=[4, 6, 6],
    num_prologue_tokens=4,
    prologue_codebook_size=16,
    codebook_dim=8,
    layer_scale_init=1.0,
)
ADAPTER_NAMES = ("prologue", "diffusers_vqmodel", "janus_vqvae", "emu3_vqvae", "chameleon_vqvae")


def tiny_vqmodel(seed: int = 0):
    """``diffusers.VQModel``: 3 levels (8, 16, 16 channels), 4-dim codes, 16px -> 4x4."""
    from diffusers import VQModel

    torch.manual_seed(seed)
    return VQModel(
        block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=4,
        vq_embed_dim=4,
        num_vq_embeddings=TINY_CODEBOOK_SIZE,
        norm_num_groups=4,
        sample_size=TINY_IMAGE_SIZE,
    ).eval()


def tiny_janus_vqvae(seed: int = 0):
    """``transformers.JanusVQVAE``: channel multipliers (1, 1, 1), latent 32, 4-dim codes, 4x4 grid (16px)."""
    from transformers import JanusVQVAE, JanusVQVAEConfig

    torch.manual_seed(seed)
    config = JanusVQVAEConfig(
        embed_dim=4, num_embeddings=TINY_CODEBOOK_SIZE, latent_channels=32, base_channels=32,
        channel_multiplier=[1, 1, 1], num_res_blocks=1, num_patches=4, projection_dim=8, image_token_embed_dim=8,
    )
    return JanusVQVAE(config).eval()


def tiny_emu3_vqvae(seed: int = 0):
    """``transformers.Emu3VQVAE``: channel multipliers (1, 1, 1), latent 4, 4-dim codes; 16px -> 4x4."""
    from transformers import Emu3VQVAE, Emu3VQVAEConfig

    torch.manual_seed(seed)
    config = Emu3VQVAEConfig(
        codebook_size=TINY_CODEBOOK_SIZE, embed_dim=4, latent_channels=4, base_channels=32,
        channel_multiplier=[1, 1, 1], num_res_blocks=1, attn_resolutions=[], temporal_downsample_factor=4,
        hidden_size=32, num_attention_heads=1,
    )
    return Emu3VQVAE(config).eval()


def tiny_chameleon_vqvae(seed: int = 0):
    """``transformers.ChameleonVQVAE`` (encode-only): channel multipliers (1, 1, 1), latent 32; 16px -> 4x4."""
    from transformers import ChameleonVQVAE, ChameleonVQVAEConfig

    torch.manual_seed(seed)
    config = ChameleonVQVAEConfig(
        embed_dim=4, num_embeddings=TINY_CODEBOOK_SIZE, latent_channels=32, resolution=TINY_IMAGE_SIZE,
        base_channels=32, channel_multiplier=[1, 1, 1], num_res_blocks=1,
    )
    return ChameleonVQVAE(config).eval()


def tiny_visual_tokenizer(name: str, seed: int = 0, **adapter_kwargs) -> VisualTokenizerAdapter:
    """A tiny adapter by name (one of :data:`ADAPTER_NAMES`); ``"prologue"`` is the 32px 2D tiny tokenizer."""
    if name == "prologue":
        return PrologueTokenizerAdapter(tiny_tokenizer(seed, tokenizer_type="2d", num_prologue_tokens=0), **adapter_kwargs)
    builders = {
        "diffusers_vqmodel": (DiffusersVQModelAdapter, tiny_vqmodel),
        "janus_vqvae": (JanusVQVAEAdapter, tiny_janus_vqvae),
        "emu3_vqvae": (Emu3VQVAEAdapter, tiny_emu3_vqvae),
        "chameleon_vqvae": (ChameleonVQVAEAdapter, tiny_chameleon_vqvae),
    }
    if name not in builders:
        raise ValueError(f"unknown tiny visual tokenizer {name!r}; expected one of {ADAPTER_NAMES}")
    adapter_cls, build = builders[name]
    adapter_kwargs.setdefault("image_size", TINY_IMAGE_SIZE)
    return adapter_cls(build(seed), **adapter_kwargs)


def tiny_post_config(adapter: VisualTokenizerAdapter, **overrides) -> ProloguePostConfig:
    """The config :func:`tiny_post_model` builds over ``adapter``."""
    return ProloguePostModel.from_visual_tokenizer(adapter, **{**TINY_POST_KWARGS, **overrides}).config


def tiny_post_model(name: str = "diffusers_vqmodel", seed: int = 0, **overrides) -> ProloguePostModel:
    """A tiny random-init :class:`ProloguePostModel` over :func:`tiny_visual_tokenizer` ``name``, in eval mode."""
    adapter = tiny_visual_tokenizer(name, seed)
    torch.manual_seed(seed)
    return ProloguePostModel.from_visual_tokenizer(adapter, **{**TINY_POST_KWARGS, **overrides}).eval()


__all__ = [
    "ADAPTER_NAMES",
    "TINY_IMAGE_SIZE",
    "TINY_CODEBOOK_SIZE",
    "TINY_POST_KWARGS",
    "tiny_vqmodel",
    "tiny_janus_vqvae",
    "tiny_emu3_vqvae",
    "tiny_chameleon_vqvae",
    "tiny_visual_tokenizer",
    "tiny_post_config",
    "tiny_post_model",
]
