"""Tiny builders for tests, docs and install checks (the way diffusers tests build dummy components)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .models import PrologueARConfig, PrologueARForCausalLM, PrologueTokenizerConfig, PrologueTokenizerModel

if TYPE_CHECKING:
    import datasets

    from .training.pretokenize import PretokenizedInfo

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


def random_image_dataset(
    num_images: int, height: int, width: int, seed: int = 0, num_classes: int = 10, add_index: bool = False
) -> datasets.Dataset:
    """``num_images`` random RGB images (uniform uint8 noise, ``height`` x ``width``, seeded by ``seed``),
    labelled ``i % num_classes``, as :func:`~prologue_hf.training.image_data.prepare_image_dataset` returns
    them (undecoded image column; an ``index`` column with ``add_index=True``): what the image trainers'
    collator reads."""
    import datasets
    import numpy as np
    import PIL.Image

    from .training.image_data import prepare_image_dataset

    rng = np.random.default_rng(seed)
    pixels = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(num_images)]
    labels = [i % num_classes for i in range(num_images)]
    dataset = datasets.Dataset.from_dict({"image": [PIL.Image.fromarray(p) for p in pixels], "label": labels})
    return prepare_image_dataset(dataset.cast_column("image", datasets.Image()), add_index=add_index)


def random_pretokenized_dataset(
    info: PretokenizedInfo, num_rows: int, seed: int = 0, views_per_image: int = 1
) -> datasets.Dataset:
    """``num_rows`` rows of uniformly random ids in ``info``'s vocabulary, with the features and the
    ``dataset.info.description`` that ``pretokenize_dataset`` writes. ``views_per_image`` consecutive rows
    share an ``image_index`` (``crop_index`` 0, 1, ...); labels are uniform in ``info.num_classes``. Not
    formatted: save it, or call ``with_format("numpy", dtype=None)`` as
    :func:`~prologue_hf.training.pretokenize.load_pretokenized_dataset` does."""
    import datasets
    import numpy as np

    from .training.pretokenize import output_features

    if num_rows % views_per_image:
        raise ValueError(f"num_rows ({num_rows}) must be a multiple of views_per_image ({views_per_image})")
    rng = np.random.default_rng(seed)
    ids_dtype = np.dtype(info.ids_dtype)
    prologue_shape, visual_shape = (num_rows, info.num_prologue_tokens), (num_rows, info.num_visual_tokens)
    num_images = num_rows // views_per_image
    table = {
        "prologue_ids": list(rng.integers(0, info.prologue_vocab_size, prologue_shape).astype(ids_dtype)),
        "visual_ids": list(rng.integers(0, info.visual_vocab_size, visual_shape).astype(ids_dtype)),
        "label": rng.integers(0, info.num_classes, num_rows).astype(np.int32),
        "crop_index": np.tile(np.arange(views_per_image, dtype=np.int8), num_images),
        "image_index": np.repeat(np.arange(num_images), views_per_image),
    }
    dataset = datasets.Dataset.from_dict(table, features=output_features(info))
    dataset.info.description = info.to_json()
    return dataset


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
    "random_image_dataset",
    "random_pretokenized_dataset",
    "TINY_TOKENIZER_KWARGS",
    "TINY_AR_KWARGS",
]
