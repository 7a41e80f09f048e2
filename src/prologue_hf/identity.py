"""Which tokenizer is this? One hash of a model's config and one of its weights, shared by every check.

A set of ids is only meaningful with the very tokenizer that produced it: a stage-2 AR trained on ids of one tokenizer
and sampled through another decodes noise, and a Prologue-Post prologue learned over one frozen VQ model means
nothing over another. So the pretokenized datasets, the AR config (``tokenizer_identity``) and the Prologue-Post
config (``visual_tokenizer["weights_sha256"]``) record hashes made here, and the loaders compare them.

* :func:`config_hash` hashes a config's JSON without :data:`VOLATILE_CONFIG_KEYS` (bookkeeping that does not change
  what the model computes).
* :func:`weights_sha256` hashes every tensor of the state dict, as held (a cast to bf16 is another tokenizer).
* :func:`tokenizer_identity` chains the two: the config alone does not tell a trained tokenizer from an untrained
  one, the weights alone do not tell two settings that run the same weights differently (e.g. the RoPE bases).

The recipes are fixed: identities stored in existing datasets and checkpoints stay valid.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

# Config keys left out of config_hash, and why each does not describe what the model computes:
VOLATILE_CONFIG_KEYS = frozenset({
    "_name_or_path",  # where the model was loaded from: moving a folder does not change the model
    "name_or_path",  # the same, as some configs spell it
    "visual_tokenizer_name_or_path",  # Prologue-Post: where its frozen tokenizer lives (that one's weights are hashed)
    "visual_tokenizer_subfolder",  # Prologue-Post: the same, its subfolder
    "transformers_version",  # the library version that wrote config.json
    "_diffusers_version",  # the same, for diffusers models
    "_commit_hash",  # the Hub revision a config was downloaded at
    "_class_name",  # diffusers' model class name (the adapter identity records the class on its own)
    "architectures",  # the class that saved the config (a model can be saved from several heads)
    "auto_map",  # remote-code loading hints
    "_attn_implementation_autoset",  # runtime choice of attention kernel
    "_use_default_values",  # diffusers' record of which fields were defaulted, not their values
    "dtype",  # the dtype a model was saved in: the weights hash sees the dtype actually held
    "torch_dtype",  # the same, under its older name
    "codebook_init",  # how the codebooks were initialised before training; a config written before it existed keeps its hash
})


def clean_config(config: Any) -> dict:
    """``config`` (a ``PreTrainedConfig``, a diffusers ``FrozenDict`` or a mapping) as a dict without
    :data:`VOLATILE_CONFIG_KEYS`."""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in values.items() if k not in VOLATILE_CONFIG_KEYS}


def config_hash(config: Any) -> str:
    """SHA-256 (64 hex digits) of :func:`clean_config` as sorted-key JSON."""
    return hashlib.sha256(json.dumps(clean_config(config), sort_keys=True, default=str).encode()).hexdigest()


def _update_with_weights(digest: Any, model: nn.Module) -> None:
    # name, dtype and shape go in too: two state dicts with the same bytes laid out differently are not the same
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())


def weights_sha256(model: nn.Module) -> str:
    """``"sha256:<32 hex>"`` over every tensor of ``model.state_dict()`` (name, dtype, shape, bytes), as held."""
    digest = hashlib.sha256()
    _update_with_weights(digest, model)
    return "sha256:" + digest.hexdigest()[:32]


def tokenizer_identity(tokenizer: nn.Module) -> str:
    """A string that names exactly which tokenizer produced a set of ids: ``"sha256:<32 hex>"`` over the
    :func:`config_hash` of ``tokenizer.config`` followed by the weights (as :func:`weights_sha256` reads them).

    ``tokenizer`` is a :class:`~prologue_hf.PrologueTokenizerModel` or a :class:`~prologue_hf.ProloguePostModel`
    (whose config records its frozen tokenizer's weights hash, and whose state dict holds the prologue encoder).

    >>> from prologue_hf.testing import tiny_tokenizer
    >>> tokenizer_identity(tiny_tokenizer(seed=0)) == tokenizer_identity(tiny_tokenizer(seed=0))
    True
    >>> tokenizer_identity(tiny_tokenizer(seed=0)) == tokenizer_identity(tiny_tokenizer(seed=1))
    False
    """
    digest = hashlib.sha256(config_hash(tokenizer.config).encode())
    _update_with_weights(digest, tokenizer)
    return "sha256:" + digest.hexdigest()[:32]


__all__ = ["VOLATILE_CONFIG_KEYS", "clean_config", "config_hash", "weights_sha256", "tokenizer_identity"]
