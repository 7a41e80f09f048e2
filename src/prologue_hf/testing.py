"""Tiny builders for tests, docs and install checks (the way diffusers tests build dummy components)."""

from __future__ import annotations

import torch

from .models import PrologueARConfig, PrologueARForCausalLM, PrologueTokenizerConfig, PrologueTokenizerModel

# The same sizes as the official tiny fixture: 32px, patch 8 (4x4 grid), width 64, 2 layers, 4 heads.
TINY_TOKENIZER_KWARGS = dict(
    image_size=32,
    patch_size=8,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    decoder_hidden_size=64,
    decoder_num_hidden_layers=2,
    decoder_num_attention_heads=4,
    rope_axes_dim=[4, 6, 6],
    visual_codebook_size=64,
    prologue_codebook_size=16,
    num_prologue_tokens=4,
    codebook_dim=8,
)
TINY_AR_KWARGS = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4)


def tiny_tokenizer_config(**overrides) -> PrologueTokenizerConfig:
    """A ~0.3M-parameter tokenizer config (32px images, 16 visual + 4 prologue tokens)."""
    return PrologueTokenizerConfig(**{**TINY_TOKENIZER_KWARGS, **overrides})


def tiny_ar_config(tokenizer_config: PrologueTokenizerConfig | None = None, num_classes: int = 10, **overrides) -> PrologueARConfig:
    """A 2-layer, width-64 AR config whose vocabulary matches ``tokenizer_config`` (tiny default)."""
    tokenizer_config = tokenizer_config or tiny_tokenizer_config()
    return PrologueARConfig.for_tokenizer(tokenizer_config, num_classes, **{**TINY_AR_KWARGS, **overrides})


def tiny_tokenizer(seed: int = 0, **overrides) -> PrologueTokenizerModel:
    """A randomly initialised tiny tokenizer in eval mode, deterministic for a given ``seed``.

    The residual gates start at 1 (not the training init of 1e-5) so the random model is not an identity map.
    """
    torch.manual_seed(seed)
    model = PrologueTokenizerModel(tiny_tokenizer_config(**{"layer_scale_init": 1.0, **overrides}))
    return model.eval()


def tiny_ar(tokenizer_config: PrologueTokenizerConfig | None = None, seed: int = 0, num_classes: int = 10, **overrides) -> PrologueARForCausalLM:
    """A randomly initialised tiny AR in eval mode, deterministic for a given ``seed``."""
    torch.manual_seed(seed)
    return PrologueARForCausalLM(tiny_ar_config(tokenizer_config, num_classes, **overrides)).eval()


def seeded_generator(seed: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``: the same draw in every call that gets a fresh one."""
    return torch.Generator().manual_seed(seed)


def tiny_pipeline(seed: int = 0, num_classes: int = 10, **sampling_kwargs):
    """A tiny random-weight :class:`~prologue_hf.pipelines.ProloguePipeline` (32px images, 10 classes named
    ``"class 0"`` ... ``"class 9"``), built in about a second; deterministic for a given ``seed``.

    ``sampling_kwargs`` go to the pipeline (``default_sampling=...``).

    >>> pipe = tiny_pipeline()
    >>> pipe.get_label_ids("class 3")
    [3]
    """
    from .pipelines.pipeline_prologue import ProloguePipeline  # deferred: diffusers is slow to import

    tokenizer = tiny_tokenizer(seed)
    ar = tiny_ar(tokenizer.config, seed=seed, num_classes=num_classes)
    id2label = {i: f"class {i}" for i in range(num_classes)} if num_classes != 1000 else None
    return ProloguePipeline(tokenizer=tokenizer, ar=ar, id2label=id2label, **sampling_kwargs)


__all__ = [
    "tiny_tokenizer_config",
    "tiny_ar_config",
    "tiny_tokenizer",
    "tiny_ar",
    "tiny_pipeline",
    "seeded_generator",
    "TINY_TOKENIZER_KWARGS",
    "TINY_AR_KWARGS",
]
