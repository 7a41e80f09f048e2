"""prologue_hf.identity: one config hash, one weights hash, one tokenizer identity for every check."""

import re

import pytest
import torch
from torch import nn

from prologue_hf.identity import (
    VOLATILE_CONFIG_KEYS,
    clean_config,
    config_hash,
    tokenizer_identity,
    weights_sha256,
)
from prologue_hf.models import PrologueTokenizerModel
from prologue_hf.models.modeling_prologue_post import ProloguePostModel
from prologue_hf.testing import tiny_tokenizer, tiny_tokenizer_config
from prologue_hf.testing_post import tiny_post_model, tiny_visual_tokenizer


def _fixed_linear() -> nn.Linear:
    linear = nn.Linear(3, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.arange(6.0).reshape(2, 3))
        linear.bias.copy_(torch.tensor([0.5, -1.0]))
    return linear


def test_weights_sha256_is_stable_and_sees_names_dtypes_and_values():
    # The recipe is fixed: this value is what checkpoints saved before identity.py existed hold for these weights.
    assert weights_sha256(_fixed_linear()) == "sha256:a637d75ddd491e16866536255fbf1530"
    changed = _fixed_linear()
    with torch.no_grad():
        changed.bias[1] = -0.999
    assert weights_sha256(changed) != weights_sha256(_fixed_linear())
    assert weights_sha256(_fixed_linear().double()) != weights_sha256(_fixed_linear())  # a cast is another model
    renamed = nn.Sequential(_fixed_linear())  # same tensors under the names "0.weight", "0.bias"
    assert weights_sha256(renamed) != weights_sha256(_fixed_linear())


def test_config_hash_ignores_exactly_the_volatile_keys():
    config = tiny_tokenizer_config()
    base = config_hash(config)
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    config._name_or_path = "/somewhere/else"
    config.transformers_version = "0.0.1"
    config.architectures = ["SomethingElse"]
    assert config_hash(config) == base
    assert config_hash(tiny_tokenizer_config(query_rope_theta=500.0)) != base
    # mappings (a diffusers FrozenDict, a saved identity's model_config) are cleaned the same way
    values = {"block_out_channels": [32, 64], "_diffusers_version": "0.42.1", "_class_name": "VQModel", "dtype": "float32"}
    assert clean_config(values) == {"block_out_channels": [32, 64]}
    assert {"_name_or_path", "visual_tokenizer_name_or_path", "visual_tokenizer_subfolder"} <= VOLATILE_CONFIG_KEYS


def test_tokenizer_identity_needs_both_config_and_weights():
    tokenizer = tiny_tokenizer(seed=0)
    identity = tokenizer_identity(tokenizer)
    assert re.fullmatch(r"sha256:[0-9a-f]{32}", identity)
    assert identity != weights_sha256(tokenizer)  # the config takes part
    # same weights, a setting that runs them differently: another tokenizer
    other_config = PrologueTokenizerModel(tiny_tokenizer_config(layer_scale_init=1.0, query_rope_theta=500.0))
    other_config.load_state_dict(tokenizer.state_dict())
    assert weights_sha256(other_config) == weights_sha256(tokenizer)
    assert tokenizer_identity(other_config) != identity
    assert tokenizer_identity(tiny_tokenizer(seed=1)) != identity  # same config, other weights


def test_post_identity_ignores_where_the_frozen_tokenizer_lives(tmp_path):
    post = tiny_post_model("prologue")
    identity = tokenizer_identity(post)
    post.config.visual_tokenizer_name_or_path = str(tmp_path / "moved")
    post.config.visual_tokenizer_subfolder = "vq"
    assert tokenizer_identity(post) == identity
    # the frozen tokenizer's weights are part of the Post config's identity record
    other = ProloguePostModel(post.config.__class__(**{**post.config.to_dict(), "visual_tokenizer": None}))
    other.load_state_dict(post.state_dict())
    other.set_visual_tokenizer(tiny_visual_tokenizer("prologue", seed=3))
    assert tokenizer_identity(other) != identity


@pytest.mark.parametrize("name", ["diffusers_vqmodel", "janus_vqvae"])
def test_adapter_identity_uses_the_same_hashes(name):
    adapter = tiny_visual_tokenizer(name)
    identity = adapter.identity()
    assert identity["weights_sha256"] == weights_sha256(adapter.model)
    assert identity["model_config"] == clean_config(adapter.model.config)
    assert not VOLATILE_CONFIG_KEYS & set(identity["model_config"])
