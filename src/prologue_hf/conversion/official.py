"""Convert the authors' Prologue checkpoints (public repo ``Zyriix/prologue``) into prologue-hf models, and our AR back.

The official release is a set of accelerate ``save_state`` shards (``model.safetensors``, ``model_1.safetensors``,
...) plus an OmegaConf config. This module reads a *resolved* config YAML and the shards, checks every key and shape
against what the config implies, and builds :class:`~prologue_hf.PrologueTokenizerModel` (or, for Prologue-Post, a
:class:`~prologue_hf.ProloguePostModel` over the converted frozen 2D tokenizer) and
:class:`~prologue_hf.PrologueARForCausalLM` whose outputs equal the official ones (float32, see
``tests/test_conversion.py`` and ``tests/test_conversion_families.py``). The family (Prologue, OneStage, Post, 1D,
2D) comes from the config (:func:`~.official_config.official_family`) and is checked against the shards' keys
(:func:`shard_kind`).

What the official code computes from a *constant* label is folded into plain parameters (the tokenizer always sees
the null label because released models use ``ae_no_label=True``; the AR Transformer always sees
``uncond_ar_labels``, class information enters only through the BOS row):

* ``c = GELU_tanh(F.normalize(W0 onehot(NC-1) + b0) * sqrt(cond_dim) * (1 + w1))`` (``cond_proj``);
* AdaRMSNorm ``F.normalize(x) * sqrt(d) * (1 + affine(c))`` -> RMSNorm weight ``1 + affine(c)``;
* residual gates ``gate(c)`` -> our layer-scale vectors (tokenizer) or a row scaling of ``o_proj`` / ``down_proj``
  (AR, ``diag(gate) @ W``);
* q/k ``AdaRMSNorm(head_dim)`` with learned ``w`` -> weight ``1 + w``.

The official AR rotates adjacent channel pairs ``(2i, 2i+1)`` of each head; Llama rotates ``(i, i + head_dim/2)``.
Permuting the rows of ``q_proj``/``k_proj`` (and the q/k norm weights) inside each head with
``[0, 2, 4, ..., 1, 3, 5, ...]`` maps one onto the other exactly (attention scores are invariant to a shared
permutation of q and k channels).

Layouts and facts, as read from the official ``models.py`` and ``train_ar.py``:
``tests/fixtures/official-prologue-tiny/SPEC.md`` and the README of each ``tests/fixtures/official-*-tiny``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from safetensors import safe_open
from tqdm.auto import tqdm
from transformers.utils import logging

from ..models import PrologueARConfig, PrologueARForCausalLM, PrologueTokenizerConfig, PrologueTokenizerModel
from ..models.modeling_prologue_post import ProloguePostModel
from .official_config import (
    OFFICIAL_FAMILIES,
    OfficialConfig,
    hidden_dim,
    official_ar_config,
    official_family,
    official_post_config,
    official_tokenizer_config,
    official_vocabulary,
)
from .output import check_output_dir, staged_output_dir

logger = logging.get_logger(__name__)

# accelerate ``save_state`` file order of the official scripts (``model.safetensors``, ``model_1``, ...): the tokenizer
# run writes encoder, decoder, EMA encoder, EMA decoder; the AR run writes the AR, then its EMA.
TOKENIZER_SLOTS = {"online": (0, 1), "ema": (2, 3)}  # (encoder, decoder); inference reads the EMA pair
AR_SLOTS = {"online": 0, "ema": 1}  # official sampling reads the online AR (``ema_sampling: False``)
JOINT_AR_SLOTS = {"online": 5, "ema": 6}  # the joint AR in a tokenizer folder (slot 4 is the GAN discriminator)
_PREFIXES_TO_STRIP = ("module", "_orig_mod")  # DDP / torch.compile wrappers


# ------------------------------------------------------------------------------------------------------ shard files
def shard_name(slot: int) -> str:
    """accelerate's name for the ``slot``-th prepared model: ``model.safetensors``, ``model_1.safetensors``, ..."""
    if slot < 0:
        raise ValueError(f"slot must be >= 0, got {slot}")
    return "model.safetensors" if slot == 0 else f"model_{slot}.safetensors"


def _strip_wrappers(key: str) -> str:
    return ".".join(part for part in key.split(".") if part not in _PREFIXES_TO_STRIP)


def load_official_shard(directory: str | Path, slot: int, role: str = "") -> tuple[dict[str, torch.Tensor], Path]:
    """Load ``directory/model[_slot].safetensors`` with ``module.`` / ``_orig_mod.`` wrappers stripped.

    Returns ``(state_dict, path)``; a missing directory or shard raises ``FileNotFoundError`` naming the file.
    """
    directory = Path(directory)
    path = directory / shard_name(slot)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    if not path.is_file():
        present = sorted(p.name for p in directory.glob("model*.safetensors"))
        raise FileNotFoundError(
            f"missing shard {path}{f' ({role})' if role else ''}; the directory holds {present or 'no model*.safetensors'}"
        )
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            new_key = _strip_wrappers(key)
            if new_key in state:
                raise ValueError(f"{path}: keys collide after stripping module./_orig_mod. prefixes: {key!r}")
            state[new_key] = handle.get_tensor(key)
    return state, path


# What a shard's keys say it holds (the folder's side of family detection; the config's side is official_family).
_KEY_SIGNATURES = (
    ("ar", re.compile(r"^(ar_model\.|bos_emb\.|semantic_emb\.|uncond_ar_labels$)")),
    ("post", re.compile(r"^semantic_enc\.")),
    ("prologue", re.compile(r"^semantic_quantizer\.")),
    ("1d", re.compile(r"^(enc|dec)\.learnable_query$")),
    ("2d", re.compile(r"^(enc|dec|quantizer)\.")),
)
_SHARD_KINDS = {
    "ar": "an AR model (ar_model.*, bos_emb.*)",
    "post": "a Prologue-Post encoder (semantic_enc.*)",
    "prologue": "a Prologue tokenizer (semantic_quantizer.*)",
    "1d": "a 1D tokenizer (learnable queries, no prologue quantizer)",
    "2d": "a 2D tokenizer (no queries, no prologue)",
}


def shard_kind(keys: Iterable[str]) -> str | None:
    """What an official shard holds, judged from its keys: ``"ar"``, ``"post"``, ``"prologue"`` (also OneStage),
    ``"1d"``, ``"2d"``, or ``None`` when no key is recognised. A decoder-only shard reads as ``"2d"`` unless it has
    the 1D decoder's ``dec.learnable_query``."""
    keys = list(keys)
    for kind, pattern in _KEY_SIGNATURES:
        if any(pattern.search(key) for key in keys):
            return kind
    return None


def _check_kind(keys: Iterable[str], path: Path, expected: str, config_path: str, family: str) -> None:
    """A shard whose keys belong to another family than the config's is refused, naming both; one with no official
    key at all (e.g. a converted prologue-hf or diffusers folder) with the list of supported families."""
    keys = list(keys)
    found = shard_kind(keys)
    if found is None:
        listing = "; ".join(f"{name}: {text}" for name, text in OFFICIAL_FAMILIES.items())
        raise ValueError(
            f"{path} is not an official Prologue checkpoint shard (no enc.* / dec.* / quantizer.* / ar_model.* key; "
            f"it holds e.g. {sorted(keys)[:3]}). Supported official families: {listing}"
        )
    if found != expected:
        raise ValueError(
            f"{path} holds {_SHARD_KINDS[found]}, but {config_path} describes the {family!r} family "
            f"({OFFICIAL_FAMILIES[family]}); pass the config that belongs to this folder, or the folder that belongs "
            "to this config"
        )


def _check_layout(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    path: Path,
    config_path: str,
    optional: Iterable[str] = (),
) -> None:
    """Every expected key present with the expected shape, nothing unexpected; errors name the file and key."""
    optional = set(optional)
    for key in sorted(state):
        if key not in expected:
            raise ValueError(f"{path}: unexpected key {key!r} (not part of the layout {config_path} describes)")
    for key, shape in expected.items():
        if key not in state:
            if key in optional:
                continue
            raise ValueError(f"{path}: missing key {key!r} (expected shape {list(shape)} from {config_path})")
        if tuple(state[key].shape) != tuple(shape):
            raise ValueError(
                f"{path}: key {key!r} has shape {list(state[key].shape)} but {config_path} implies {list(shape)}"
            )


def _transformer_layout(
    prefix: str, layers: int, dim: int, heads: int, hidden: int, cond_dim: int, num_labels: int, bias: bool
) -> dict[str, tuple[int, ...]]:
    """Official ``Transformer`` keys shared by encoder, decoder and AR (cond_proj + layers)."""
    head_dim = dim // heads
    shapes = {
        f"{prefix}cond_proj.0.weight": (cond_dim, num_labels),
        f"{prefix}cond_proj.0.bias": (cond_dim,),
        f"{prefix}cond_proj.1.weight": (cond_dim,),
    }
    for i in range(layers):
        p = f"{prefix}layers.{i}."
        shapes.update({
            f"{p}adaln_1.affine.weight": (dim, cond_dim),
            f"{p}adaln_1.affine.bias": (dim,),
            f"{p}attn1.to_q.weight": (dim, dim),
            f"{p}attn1.to_kv.weight": (2 * dim, dim),
            f"{p}attn1.q_norm.weight": (head_dim,),
            f"{p}attn1.k_norm.weight": (head_dim,),
            f"{p}attn1.proj.weight": (dim, dim),
            f"{p}gate1.weight": (dim, cond_dim),
            f"{p}adaln_mlp.affine.weight": (dim, cond_dim),
            f"{p}adaln_mlp.affine.bias": (dim,),
            f"{p}ffn.fc1.weight": (2 * hidden, dim),
            f"{p}ffn.fc2.weight": (dim, hidden),
            f"{p}gate_mlp.weight": (dim, cond_dim),
        })
        if bias:
            shapes.update({
                f"{p}attn1.proj.bias": (dim,),
                f"{p}gate1.bias": (dim,),
                f"{p}ffn.fc1.bias": (2 * hidden,),
                f"{p}ffn.fc2.bias": (dim,),
                f"{p}gate_mlp.bias": (dim,),
            })
    return shapes


def _section_layout(config: OfficialConfig, section: str, prefix: str, bias: bool) -> dict[str, tuple[int, ...]]:
    return _transformer_layout(
        prefix,
        config.size(f"{section}.layer_num"),
        config.size(f"{section}.dim"),
        config.size(f"{section}.heads"),
        hidden_dim(config, section),
        config.size(f"{section}.cond_dim"),
        config.size(f"{section}.cond_input_dim"),
        bias,
    )


def _bias_keys(layout: Mapping[str, tuple[int, ...]]) -> set[str]:
    # The tokenizer layers' biases follow ffn_bias / attn_out_bias (default True); when a config turns them off the
    # keys are absent and our biases are zero, which is the same function.
    return {k for k in layout if re.search(r"\.(attn1\.proj|gate1|gate_mlp|ffn\.fc1|ffn\.fc2)\.bias$", k)}


# ---------------------------------------------------------------------------------------------------------- folding
def null_condition(state: Mapping[str, torch.Tensor], prefix: str, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The official ``cond_proj`` applied to the null label, in float64.

    ``c = GELU_tanh(F.normalize(W0 y + b0) * sqrt(cond_dim) * (1 + w1))`` with ``y = onehot(NC - 1)`` (or ``labels``
    ``[1, NC]`` when given, e.g. the AR's stored ``uncond_ar_labels``). Returns ``[cond_dim]``.
    """
    weight = state[f"{prefix}cond_proj.0.weight"].double()  # [cond_dim, NC]
    if labels is None:
        labels = F.one_hot(torch.tensor(weight.shape[1] - 1), weight.shape[1])
    y = labels.reshape(-1).double()
    h = weight @ y + state[f"{prefix}cond_proj.0.bias"].double()
    h = F.normalize(h, dim=-1) * math.sqrt(h.shape[-1]) * (1.0 + state[f"{prefix}cond_proj.1.weight"].double())
    return F.gelu(h, approximate="tanh")


def _linear(state: Mapping[str, torch.Tensor], prefix: str, c: torch.Tensor) -> torch.Tensor:
    """``W c + b`` (``b`` optional) in float64: an official cond-Linear evaluated at the constant condition."""
    out = state[f"{prefix}.weight"].double() @ c
    if f"{prefix}.bias" in state:
        out = out + state[f"{prefix}.bias"].double()
    return out


def _rope_permutation(head_dim: int) -> torch.Tensor:
    """Channel order that turns the official adjacent pairs ``(2i, 2i+1)`` into Llama's ``(i, i + head_dim/2)``."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def _permute_heads(weight: torch.Tensor, heads: int, perm: torch.Tensor) -> torch.Tensor:
    """Permute the output rows of ``weight`` ``[heads * head_dim, in]`` inside each head."""
    return weight.reshape(heads, -1, weight.shape[-1])[:, perm].reshape(weight.shape)


# -------------------------------------------------------------------------------------------------------- tokenizer
def _tokenizer_block(state: Mapping[str, torch.Tensor], prefix: str, c: torch.Tensor, dim: int, ours: str) -> dict:
    """Official tokenizer ``TransformerLayer`` -> our ``ViTBlock`` (folded at the constant condition ``c``)."""
    zeros = torch.zeros(dim, dtype=torch.float64)
    out = {
        f"{ours}.norm1.weight": 1.0 + _linear(state, f"{prefix}adaln_1.affine", c),
        f"{ours}.attn.to_q.weight": state[f"{prefix}attn1.to_q.weight"],
        f"{ours}.attn.to_kv.weight": state[f"{prefix}attn1.to_kv.weight"],
        f"{ours}.attn.q_norm.weight": 1.0 + state[f"{prefix}attn1.q_norm.weight"].double(),
        f"{ours}.attn.k_norm.weight": 1.0 + state[f"{prefix}attn1.k_norm.weight"].double(),
        f"{ours}.attn.proj.weight": state[f"{prefix}attn1.proj.weight"],
        f"{ours}.attn.proj.bias": state.get(f"{prefix}attn1.proj.bias", zeros),
        f"{ours}.gate_attn": _linear(state, f"{prefix}gate1", c),
        f"{ours}.norm2.weight": 1.0 + _linear(state, f"{prefix}adaln_mlp.affine", c),
        f"{ours}.mlp.fc1.weight": state[f"{prefix}ffn.fc1.weight"],  # same layout: first half is the gate
        f"{ours}.mlp.fc2.weight": state[f"{prefix}ffn.fc2.weight"],
        f"{ours}.gate_mlp": _linear(state, f"{prefix}gate_mlp", c),
    }
    hidden2 = state[f"{prefix}ffn.fc1.weight"].shape[0]
    out[f"{ours}.mlp.fc1.bias"] = state.get(f"{prefix}ffn.fc1.bias", torch.zeros(hidden2, dtype=torch.float64))
    out[f"{ours}.mlp.fc2.bias"] = state.get(f"{prefix}ffn.fc2.bias", zeros)
    return out


def _check_pos_select_mask(state: Mapping[str, torch.Tensor], key: str, path: Path) -> None:
    # The official argmax adds this mask; released models keep it all zeros. Anything else would
    # restrict code choices per position, which our quantizers do not model.
    if bool(state[key].ne(0).any()):
        raise NotImplementedError(f"{path}: key {key!r} is not all zeros; per-position code masks are not supported")


def _resolve_weights(config: OfficialConfig, weights: str | None, flag: str, default: bool, slots: Mapping) -> str:
    """``weights`` as given, or what the official inference reads: ``"ema"`` when the config's ``flag``
    (``ema_reconstruction`` / ``ema_sampling``) is true."""
    if weights is None:
        value = config.get(flag, default)
        if not isinstance(value, bool):
            raise ValueError(f"{config.path}: config key {flag!r} must be true or false, got {value!r}")
        weights = "ema" if value else "online"
    if weights not in slots:
        raise ValueError(f"weights must be one of {sorted(slots)} or None (the config's {flag}), got {weights!r}")
    return weights


def _quantizer_layout(config: OfficialConfig, prefix: str, section: str, dim: int) -> dict[str, tuple[int, ...]]:
    size, z_dim = config.size(f"{section}.codebook_size"), config.size(f"{section}.z_dim")
    return {
        f"{prefix}.proj_in.weight": (z_dim, dim),
        f"{prefix}.proj_in.bias": (z_dim,),
        f"{prefix}.embedding.weight": (size, z_dim),
        f"{prefix}.pos_select_mask": (config.size(f"{section}.length"), size),
    }


def _encoder_layout(
    config: OfficialConfig, ours: PrologueTokenizerConfig, prefix: str = "enc.", section: str = "Encoder",
    input_dim: int | None = None, num_queries: int | None = None,
) -> dict[str, tuple[int, ...]]:
    """An official encoder Transformer: cond_proj + layers, ``input_layer`` and (concat mode) ``learnable_query``."""
    dim = config.size(f"{section}.dim")
    if num_queries is None:
        num_queries = ours.num_latent_tokens if ours.tokenizer_type == "1d" else ours.num_prologue_tokens
    layout = _section_layout(config, section, prefix, bias=True)
    layout[f"{prefix}input_layer.weight"] = (dim, ours.patch_dim if input_dim is None else input_dim)
    layout[f"{prefix}input_layer.bias"] = (dim,)
    if num_queries:
        layout[f"{prefix}learnable_query"] = (1, num_queries, dim)
    return layout


def _tokenizer_layouts(
    config: OfficialConfig, ours: PrologueTokenizerConfig
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Expected ``(encoder shard, decoder shard)`` keys and shapes of a Prologue / 2D / 1D tokenizer."""
    enc_layout = _encoder_layout(config, ours)
    enc_layout.update(_quantizer_layout(config, "quantizer", "Quantizer", ours.hidden_size))
    if ours.num_prologue_tokens:
        enc_layout.update(_quantizer_layout(config, "semantic_quantizer", "SemanticQuantizer", ours.hidden_size))
    dec_dim = ours.decoder_hidden_size
    dec_layout = _section_layout(config, "Decoder", "dec.", bias=True)
    dec_layout.update({
        "dec.input_layer.weight": (dec_dim, ours.codebook_dim),
        "dec.input_layer.bias": (dec_dim,),
        "dec.out_norm.affine.weight": (dec_dim, config.size("Decoder.cond_dim")),
        "dec.out_norm.affine.bias": (dec_dim,),
        "dec.out.weight": (ours.patch_dim, dec_dim),
        "dec.out.bias": (ours.patch_dim,),
    })
    if ours.tokenizer_type == "1d":
        dec_layout["dec.learnable_query"] = (1, ours.num_patches, dec_dim)  # one mask query per patch
    return enc_layout, dec_layout


def _vit_layers(state: Mapping[str, torch.Tensor], prefix: str, ours: str, num_layers: int) -> dict:
    """All layers of an official tokenizer-side Transformer, folded at its null condition."""
    c = null_condition(state, prefix)
    dim = state[f"{prefix}layers.0.attn1.to_q.weight"].shape[0] if num_layers else 0
    out: dict[str, torch.Tensor] = {}
    for i in range(num_layers):
        out.update(_tokenizer_block(state, f"{prefix}layers.{i}.", c, dim, f"{ours}.layers.{i}"))
    return out


def _load_tokenizer_shards(
    tokenizer_dir: str | Path, config: OfficialConfig, family: str, weights: str | None,
    encoder_slot: int | None, decoder_slot: int | None,
) -> tuple[dict[str, torch.Tensor], Path, dict[str, torch.Tensor], Path, str]:
    weights = _resolve_weights(config, weights, "ema_reconstruction", True, TOKENIZER_SLOTS)
    enc_slot = TOKENIZER_SLOTS[weights][0] if encoder_slot is None else encoder_slot
    dec_slot = TOKENIZER_SLOTS[weights][1] if decoder_slot is None else decoder_slot
    enc_state, enc_path = load_official_shard(tokenizer_dir, enc_slot, f"tokenizer encoder, {weights} weights")
    dec_state, dec_path = load_official_shard(tokenizer_dir, dec_slot, f"tokenizer decoder, {weights} weights")
    expected = {"onestage": "prologue"}.get(family, family)
    _check_kind(enc_state, enc_path, expected, config.path, family)
    _check_kind(dec_state, dec_path, "1d" if family == "1d" else "2d", config.path, family)
    return enc_state, enc_path, dec_state, dec_path, weights


def _build_tokenizer(
    enc_state: Mapping[str, torch.Tensor], enc_path: Path, dec_state: Mapping[str, torch.Tensor], dec_path: Path,
    config: OfficialConfig, ours_config: PrologueTokenizerConfig, dtype: torch.dtype,
) -> PrologueTokenizerModel:
    """Check the encoder (``enc.*``, ``quantizer.*``, ...) and decoder (``dec.*``) keys and map them onto ours."""
    enc_layout, dec_layout = _tokenizer_layouts(config, ours_config)
    # a Post encoder shard also holds the prologue encoder (semantic_*), checked by _build_post
    post_keys = ("semantic_enc.", "semantic_quantizer.") if "semantic_enc.input_layer.weight" in enc_state else ()
    enc_own = {k: v for k, v in enc_state.items() if not (post_keys and k.startswith(post_keys))}
    _check_layout(enc_own, enc_layout, enc_path, config.path, _bias_keys(enc_layout))
    _check_layout(dec_state, dec_layout, dec_path, config.path, _bias_keys(dec_layout) | {"dec.out.bias"})
    quantizers = [("quantizer", "visual_quantizer")]
    if ours_config.num_prologue_tokens:
        quantizers.append(("semantic_quantizer", "prologue_quantizer"))
    for official, _ in quantizers:
        _check_pos_select_mask(enc_state, f"{official}.pos_select_mask", enc_path)

    # ae_no_label: the official encoder and decoder always receive the null (unconditional) label
    converted: dict[str, torch.Tensor] = {
        "encoder.input_layer.weight": enc_state["enc.input_layer.weight"],
        "encoder.input_layer.bias": enc_state["enc.input_layer.bias"],
        "decoder.input_layer.weight": dec_state["dec.input_layer.weight"],
        "decoder.input_layer.bias": dec_state["dec.input_layer.bias"],
        "decoder.output_layer.weight": dec_state["dec.out.weight"],
        "decoder.output_layer.bias": dec_state.get("dec.out.bias", torch.zeros(ours_config.patch_dim)),
    }
    if "enc.learnable_query" in enc_layout:
        converted["encoder.queries"] = enc_state["enc.learnable_query"]
    if "dec.learnable_query" in dec_layout:
        converted["decoder.mask_tokens"] = dec_state["dec.learnable_query"]
    for official, ours in quantizers:
        for key in ("proj_in.weight", "proj_in.bias", "embedding.weight"):
            converted[f"{ours}.{key}"] = enc_state[f"{official}.{key}"]
    converted.update(_vit_layers(enc_state, "enc.", "encoder", ours_config.num_hidden_layers))
    converted.update(_vit_layers(dec_state, "dec.", "decoder", ours_config.decoder_num_hidden_layers))
    converted["decoder.norm.weight"] = 1.0 + _linear(dec_state, "dec.out_norm.affine", null_condition(dec_state, "dec."))

    model = PrologueTokenizerModel(ours_config)
    model.load_state_dict({k: v.to(dtype) for k, v in converted.items()}, strict=True)
    logger.info("converted official tokenizer from %s and %s", enc_path, dec_path)
    return model.to(dtype).eval()


def _build_post(
    enc_state: Mapping[str, torch.Tensor], enc_path: Path, config: OfficialConfig,
    visual_tokenizer: PrologueTokenizerModel, dtype: torch.dtype,
) -> ProloguePostModel:
    """The Post prologue encoder (``semantic_enc.*`` + ``semantic_quantizer.*``) over the frozen 2D tokenizer."""
    kwargs = official_post_config(config)
    k = kwargs["num_prologue_tokens"]
    layout = _encoder_layout(
        config, visual_tokenizer.config, "semantic_enc.", "SemanticEncoder", config.size("Encoder.dim"), k
    )
    layout.update(_quantizer_layout(config, "semantic_quantizer", "SemanticQuantizer", kwargs["hidden_size"]))
    semantic = {k_: v for k_, v in enc_state.items() if k_.startswith(("semantic_enc.", "semantic_quantizer."))}
    _check_layout(semantic, layout, enc_path, config.path, _bias_keys(layout))
    _check_pos_select_mask(enc_state, "semantic_quantizer.pos_select_mask", enc_path)
    converted = {
        "prologue_encoder.input_layer.weight": enc_state["semantic_enc.input_layer.weight"],
        "prologue_encoder.input_layer.bias": enc_state["semantic_enc.input_layer.bias"],
        "prologue_encoder.queries": enc_state["semantic_enc.learnable_query"],
        **_vit_layers(enc_state, "semantic_enc.", "prologue_encoder", kwargs["num_hidden_layers"]),
    }
    for key in ("proj_in.weight", "proj_in.bias", "embedding.weight"):
        converted[f"prologue_quantizer.{key}"] = enc_state[f"semantic_quantizer.{key}"]
    model = ProloguePostModel.from_visual_tokenizer(visual_tokenizer, **kwargs)
    model.load_state_dict({k_: v.to(dtype) for k_, v in converted.items()}, strict=True)
    logger.info("converted official Prologue-Post encoder from %s", enc_path)
    return model.to(dtype).eval()


def convert_official_tokenizer(
    tokenizer_dir: str | Path,
    config: OfficialConfig | str | Path,
    weights: str | None = None,
    encoder_slot: int | None = None,
    decoder_slot: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> PrologueTokenizerModel | ProloguePostModel:
    """Build the tokenizer of an official checkpoint folder, whichever family the config describes.

    * Prologue / OneStage, 2D and 1D tokenizers become a :class:`PrologueTokenizerModel` (``tokenizer_type``
      ``"prologue"``, ``"2d"``, ``"1d"``);
    * Prologue-Post becomes a :class:`ProloguePostModel` whose frozen visual tokenizer is the converted 2D tokenizer
      (``enc.*`` / ``quantizer.*`` / ``dec.*``) and whose prologue encoder is ``semantic_enc.*`` /
      ``semantic_quantizer.*``.

    Args:
        tokenizer_dir: folder with the accelerate shards (``model.safetensors`` = encoder, ``model_1`` = decoder,
            ``model_2`` / ``model_3`` = their EMA copies).
        config: the resolved official config (path or :class:`OfficialConfig`).
        weights: ``"ema"`` (``model_2`` + ``model_3``), ``"online"`` (``model`` + ``model_1``) or ``None``: what
            the official inference reads, i.e. the config's ``ema_reconstruction`` (true by default; OneStage's
            eval config sets it false).
        encoder_slot, decoder_slot: explicit shard indices, overriding ``weights``.
        dtype: dtype of the returned model (folding is done in float64).

    Returns:
        The tokenizer in eval mode.

    >>> tokenizer = convert_official_tokenizer("ckpts/prologue-b-tokenizer", "config.yaml")  # doctest: +SKIP
    """
    config = config if isinstance(config, OfficialConfig) else OfficialConfig.from_yaml(config)
    family = official_family(config)
    # the folder's keys first: a config of another family is best reported as such, not by one of its settings
    enc_state, enc_path, dec_state, dec_path, _ = _load_tokenizer_shards(
        tokenizer_dir, config, family, weights, encoder_slot, decoder_slot
    )
    ours_config = official_tokenizer_config(config, family)
    tokenizer = _build_tokenizer(enc_state, enc_path, dec_state, dec_path, config, ours_config, dtype)
    if family != "post":
        return tokenizer
    return _build_post(enc_state, enc_path, config, tokenizer, dtype)


# --------------------------------------------------------------------------------------------------------------- AR
def _ar_layout(config: OfficialConfig, ar_vocab: int, tied: bool) -> dict[str, tuple[int, ...]]:
    dim, num_labels = config.size("ARModel.dim"), config.size("ARModel.cond_input_dim")
    layout = _section_layout(config, "ARModel", "ar_model.", bias=False)
    layout.update({
        "bos_emb.weight": (num_labels, dim),
        "semantic_emb.weight": (ar_vocab, dim),
        "uncond_ar_labels": (1, num_labels),
        "ar_model.out_norm.affine.weight": (dim, config.size("ARModel.cond_dim")),
        "ar_model.out_norm.affine.bias": (dim,),
    })
    if not tied:
        layout["ar_model.out.weight"] = (ar_vocab, dim)
    return layout


def convert_official_ar(
    ar_dir: str | Path,
    config: OfficialConfig | str | Path,
    weights: str | None = None,
    slot: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> PrologueARForCausalLM:
    """Build a :class:`PrologueARForCausalLM` from an official AR checkpoint directory (any family's stage-3 AR).

    Args:
        ar_dir: folder with ``model.safetensors`` (AR) and ``model_1.safetensors`` (its EMA).
        config: the resolved official config (path or :class:`OfficialConfig`).
        weights: ``"online"`` (``model.safetensors``), ``"ema"`` or ``None``: what the official sampling reads, i.e.
            the config's ``ema_sampling`` (false by default).
        slot: explicit shard index, overriding ``weights``.
        dtype: dtype of the returned model (folding is done in float64).

    Returns:
        The AR in eval mode. Its logits on the first ``V + P + 1`` columns (``V`` for the 1D / 2D baselines) equal
        the official ones; class rows of ``lm_head`` are zero (never sampled: the logit mask removes them).

    >>> ar = convert_official_ar("ckpts/ar-prologue-b-b", "config.yaml")  # doctest: +SKIP
    """
    config = config if isinstance(config, OfficialConfig) else OfficialConfig.from_yaml(config)
    weights = _resolve_weights(config, weights, "ema_sampling", False, AR_SLOTS)
    slot = AR_SLOTS[weights] if slot is None else slot
    tokenizer_shard = Path(ar_dir) / shard_name(0)
    if tokenizer_shard.is_file() and shard_kind(_shard_keys(ar_dir)) not in (None, "ar"):
        raise ValueError(
            f"{ar_dir} is a tokenizer folder ({tokenizer_shard} holds an encoder), not an AR folder. A joint AR stored "
            "there (OneStage: model_5 / model_6) is read by convert_official_joint_ar, or by convert_official_checkpoint "
            "with the OneStage config (continuous_training: true) and no ar_dir"
        )
    state, path = load_official_shard(ar_dir, slot, f"AR, {weights} weights")
    return _build_ar(state, path, config, dtype)


def convert_official_joint_ar(
    tokenizer_dir: str | Path,
    config: OfficialConfig | str | Path,
    weights: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> PrologueARForCausalLM:
    """The joint AR that a Prologue-OneStage tokenizer folder carries (``model_5``; ``model_6`` is its EMA), as the
    official evaluation loads it with ``continuous_training: true`` (train_ar.py, strict load).

    Args:
        tokenizer_dir: the OneStage tokenizer folder.
        config: the resolved official OneStage config (its ``ARModel`` section describes the joint AR).
        weights: ``"online"`` (``model_5``), ``"ema"`` (``model_6``) or ``None`` (the config's ``ema_sampling``).
        dtype: dtype of the returned model.
    """
    config = config if isinstance(config, OfficialConfig) else OfficialConfig.from_yaml(config)
    weights = _resolve_weights(config, weights, "ema_sampling", False, JOINT_AR_SLOTS)
    state, path = load_official_shard(tokenizer_dir, JOINT_AR_SLOTS[weights], f"joint AR, {weights} weights")
    return _build_ar(state, path, config, dtype)


def _build_ar(
    state: dict[str, torch.Tensor], path: Path, config: OfficialConfig, dtype: torch.dtype
) -> PrologueARForCausalLM:
    """Check an official ``ARModel`` state dict against the config and fold it into ours."""
    found = shard_kind(state)
    if found != "ar":
        what = _SHARD_KINDS[found] if found else f"no official key (e.g. {sorted(state)[:3]})"
        raise ValueError(f"{path} holds {what}, not an official AR model (ar_model.*, bos_emb.*)")
    ours_config = official_ar_config(config)
    vocabulary = ours_config.vocabulary
    _, ar_vocab = official_vocabulary(config)
    state.pop("logit_mask", None)  # non-persistent in the current code; old checkpoints carry it (train_ar.py:582)
    tied = ours_config.tie_word_embeddings
    layout = _ar_layout(config, ar_vocab, tied)
    _check_layout(state, layout, path, config.path)

    dim, heads = ours_config.hidden_size, ours_config.num_attention_heads
    perm = _rope_permutation(dim // heads)
    c = null_condition(state, "ar_model.", labels=state["uncond_ar_labels"])
    embed = torch.zeros(vocabulary.vocab_size, dim, dtype=torch.float64)
    embed[:ar_vocab] = state["semantic_emb.weight"].double()  # visual | prologue | EOS (baselines: visual), same order
    embed[vocabulary.class_offset :] = state["bos_emb.weight"].double()  # classes 0..NC-2, then the null row NC-1
    converted: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": embed,
        "model.norm.weight": 1.0 + _linear(state, "ar_model.out_norm.affine", c),
    }
    if tied:
        converted["lm_head.weight"] = embed
    else:
        head = torch.zeros(vocabulary.vocab_size, dim, dtype=torch.float64)
        head[:ar_vocab] = state["ar_model.out.weight"].double()  # class rows stay 0: masked during sampling
        converted["lm_head.weight"] = head
    for i in tqdm(range(ours_config.num_hidden_layers), desc="AR layers", disable=ours_config.num_hidden_layers < 8):
        p, ours = f"ar_model.layers.{i}.", f"model.layers.{i}"
        to_kv = state[f"{p}attn1.to_kv.weight"]
        fc1 = state[f"{p}ffn.fc1.weight"]
        hidden = fc1.shape[0] // 2
        converted.update({
            f"{ours}.input_layernorm.weight": 1.0 + _linear(state, f"{p}adaln_1.affine", c),
            f"{ours}.self_attn.q_proj.weight": _permute_heads(state[f"{p}attn1.to_q.weight"], heads, perm),
            f"{ours}.self_attn.k_proj.weight": _permute_heads(to_kv[:dim], heads, perm),
            f"{ours}.self_attn.v_proj.weight": to_kv[dim:],
            f"{ours}.self_attn.q_norm.weight": 1.0 + state[f"{p}attn1.q_norm.weight"].double()[perm],
            f"{ours}.self_attn.k_norm.weight": 1.0 + state[f"{p}attn1.k_norm.weight"].double()[perm],
            # gate1(c) scales the attention branch per output channel: fold it into the rows of o_proj.
            f"{ours}.self_attn.o_proj.weight": _linear(state, f"{p}gate1", c)[:, None]
            * state[f"{p}attn1.proj.weight"].double(),
            f"{ours}.post_attention_layernorm.weight": 1.0 + _linear(state, f"{p}adaln_mlp.affine", c),
            # GEGLU: fc1 = [gate | value], out = fc2(gelu(value) * gate); Llama: down(act(gate_proj) * up_proj).
            f"{ours}.mlp.up_proj.weight": fc1[:hidden],
            f"{ours}.mlp.gate_proj.weight": fc1[hidden:],
            f"{ours}.mlp.down_proj.weight": _linear(state, f"{p}gate_mlp", c)[:, None] * state[f"{p}ffn.fc2.weight"].double(),
        })
    model = PrologueARForCausalLM(ours_config)
    model.load_state_dict({k: v.to(dtype) for k, v in converted.items()}, strict=True)
    if tied:
        model.tie_weights()
    logger.info("converted official AR from %s", path)
    return model.to(dtype).eval()


def _shard_keys(directory: str | Path, slot: int = 0) -> list[str]:
    with safe_open(str(Path(directory) / shard_name(slot)), framework="pt") as handle:
        return list(handle.keys())


# ------------------------------------------------------------------------------------------------- reverse (AR only)
def _check_official_ar_layout(config: PrologueARConfig, cond_dim: int) -> None:
    """Raise unless ``config`` is an AR the official ``ARModel`` can express; warn about what only differs slightly."""
    if not config.use_qk_norm or config.rope_axes_dim is None:
        raise NotImplementedError(
            "only ARs with use_qk_norm=True and rope_axes_dim set (the official layout) can be written in the official "
            f"format; got use_qk_norm={config.use_qk_norm}, rope_axes_dim={config.rope_axes_dim}"
        )
    if config.hidden_act != "gelu_pytorch_tanh" or config.attention_bias or config.mlp_bias:
        raise NotImplementedError("the official AR is GEGLU (gelu_pytorch_tanh) without biases")
    if config.num_key_value_heads != config.num_attention_heads or config.head_dim * config.num_attention_heads != config.hidden_size:
        raise NotImplementedError("the official AR has no grouped-query attention and head_dim = dim / heads")
    if config.rope_parameters.get("rope_type", "default") != "default":
        raise NotImplementedError(f"rope scaling {config.rope_parameters} has no official equivalent")
    if not config.vocabulary.has_prologue:
        raise NotImplementedError("the official Prologue AR needs num_prologue_tokens > 0")
    if cond_dim < 1:
        raise ValueError(f"cond_dim must be >= 1, got {cond_dim}")
    if config.rms_norm_eps > 1e-8:
        logger.warning(
            "rms_norm_eps=%g: the official AdaRMSNorm has no epsilon, outputs differ slightly", config.rms_norm_eps
        )


def _official_affine(prefix: str, weight: torch.Tensor, cond_dim: int) -> dict[str, torch.Tensor]:
    """An official AdaRMSNorm affine that reproduces our norm ``weight`` (shape ``(dim,)``) for a constant ``c``:
    ``weight = 0`` (shape ``(dim, cond_dim)``) and ``bias = weight - 1`` (the official norm scales by ``1 + bias``)."""
    dim = weight.shape[0]
    return {f"{prefix}.weight": torch.zeros(dim, cond_dim, dtype=torch.float64), f"{prefix}.bias": weight - 1.0}


def _official_ar_layer(
    state: dict[str, torch.Tensor], layer: int, heads: int, inverse: torch.Tensor, gate: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Official tensors of decoder layer ``layer`` from our float64 ``state``: RoPE permutation undone with
    ``inverse`` (shape ``(head_dim,)``), norms as constant-``c`` affines, both gates set to ``gate`` (``W c = 1``)."""
    p, ours = f"ar_model.layers.{layer}.", f"model.layers.{layer}."
    cond_dim = gate.shape[1]
    return {
        **_official_affine(f"{p}adaln_1.affine", state[f"{ours}input_layernorm.weight"], cond_dim),
        f"{p}attn1.to_q.weight": _permute_heads(state[f"{ours}self_attn.q_proj.weight"], heads, inverse),
        f"{p}attn1.to_kv.weight": torch.cat([
            _permute_heads(state[f"{ours}self_attn.k_proj.weight"], heads, inverse),
            state[f"{ours}self_attn.v_proj.weight"],
        ]),
        f"{p}attn1.q_norm.weight": state[f"{ours}self_attn.q_norm.weight"][inverse] - 1.0,
        f"{p}attn1.k_norm.weight": state[f"{ours}self_attn.k_norm.weight"][inverse] - 1.0,
        f"{p}attn1.proj.weight": state[f"{ours}self_attn.o_proj.weight"],
        f"{p}gate1.weight": gate,
        **_official_affine(f"{p}adaln_mlp.affine", state[f"{ours}post_attention_layernorm.weight"], cond_dim),
        f"{p}ffn.fc1.weight": torch.cat([state[f"{ours}mlp.up_proj.weight"], state[f"{ours}mlp.gate_proj.weight"]]),
        f"{p}ffn.fc2.weight": state[f"{ours}mlp.down_proj.weight"],
        f"{p}gate_mlp.weight": gate,
    }


def _official_ar_config_entries(config: PrologueARConfig, cond_dim: int) -> dict[str, Any]:
    """The official config keys (``z_len``, codebook sizes, ``ARModel.*``) describing the AR ``config``."""
    vocabulary = config.vocabulary
    dim, heads = config.hidden_size, config.num_attention_heads
    num_labels = vocabulary.num_classes + 1
    return {
        "z_len": vocabulary.num_prologue_tokens,
        "x_len": vocabulary.num_visual_tokens,
        "Prologue": True,
        "share_semantic_codebook": False,
        "share_semantic_encoder": True,
        "use_eos": True,
        "Quantizer": {"codebook_size": vocabulary.visual_vocab_size},
        "SemanticQuantizer": {"codebook_size": vocabulary.prologue_vocab_size},
        "ARModel": {
            "dim": dim,
            "layer_num": config.num_hidden_layers,
            "heads": heads,
            "mlp_ratio": f"{config.intermediate_size}/{dim}",
            "cond_dim": cond_dim,
            "cond_input_dim": num_labels,
            "max_seq_len": vocabulary.num_prologue_tokens + vocabulary.num_visual_tokens,
            "rope_theta": config.rope_parameters["rope_theta"],
            "rope_axes_dim": list(config.rope_axes_dim),
            "tied_embedding": bool(config.tie_word_embeddings),
            "conditional_injection": "llamagen",
            "context_type": "none",
            "rope_input_type": "l",
            "causal": True,
            "attn_norm": True,
            "input_layer": False,
            "out_norm": True,
            "out_layer": not config.tie_word_embeddings,
            "ffn_bias": False,
            "out_bias": False,
            "attn_out_bias": False,
            "temperature": 1.0,
        },
    }


def ar_to_official(model: PrologueARForCausalLM, cond_dim: int = 32) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Our AR -> an official ``ARModel`` state dict and the config entries it needs.

    The official code conditions its norms and gates on ``c = cond_proj(onehot(null))``; we choose ``cond_proj`` so
    that ``c`` is a constant vector (``W0 = 0``, ``b0 = 1``, ``w1 = 0`` give ``c = GELU_tanh(1) * ones``), then set
    each AdaRMSNorm affine to ``weight = 0, bias = ours - 1`` and each gate to a rank-one ``W`` with ``W c = 1``
    (``o_proj``/``down_proj`` keep our folded scaling). The RoPE permutation is undone.

    Args:
        model: a converted or trained :class:`PrologueARForCausalLM` with ``use_qk_norm=True`` and ``rope_axes_dim``.
        cond_dim: ``ARModel.cond_dim`` to write (any value >= 1 works; the release uses ``cond_emb_dim: 32``).

    Returns:
        ``(state_dict, config_entries)``: tensors keyed as in the official ``ar/model.safetensors``, and a nested dict
        of the official config keys (``z_len``, codebook sizes, ``ARModel.*``) that describe it.
    """
    config = model.config
    _check_official_ar_layout(config, cond_dim)
    vocabulary = config.vocabulary
    state = {k: v.detach().double().cpu() for k, v in model.state_dict().items()}
    dim, heads = config.hidden_size, config.num_attention_heads
    inverse = torch.argsort(_rope_permutation(dim // heads))
    ar_vocab = vocabulary.eos_token_id + 1
    num_labels = vocabulary.num_classes + 1
    c_value = F.gelu(torch.tensor(1.0, dtype=torch.float64), approximate="tanh")
    gate = torch.full((dim, cond_dim), 1.0 / (cond_dim * float(c_value)), dtype=torch.float64)  # W c = 1

    out: dict[str, torch.Tensor] = {
        "bos_emb.weight": state["model.embed_tokens.weight"][vocabulary.class_offset :],
        "semantic_emb.weight": state["model.embed_tokens.weight"][:ar_vocab],
        "uncond_ar_labels": F.one_hot(torch.tensor([num_labels - 1]), num_labels).double(),
        "ar_model.cond_proj.0.weight": torch.zeros(cond_dim, num_labels, dtype=torch.float64),
        "ar_model.cond_proj.0.bias": torch.ones(cond_dim, dtype=torch.float64),
        "ar_model.cond_proj.1.weight": torch.zeros(cond_dim, dtype=torch.float64),
        **_official_affine("ar_model.out_norm.affine", state["model.norm.weight"], cond_dim),
    }
    if not config.tie_word_embeddings:
        out["ar_model.out.weight"] = state["lm_head.weight"][:ar_vocab]
    for i in range(config.num_hidden_layers):
        out.update(_official_ar_layer(state, i, heads, inverse, gate))
    dtype = model.get_input_embeddings().weight.dtype
    out = {k: v.to(dtype).contiguous() for k, v in out.items()}
    return out, _official_ar_config_entries(config, cond_dim)


def save_official_ar(
    model: PrologueARForCausalLM, output_dir: str | Path, cond_dim: int = 32, overwrite: bool = False
) -> dict[str, Path]:
    """Write our AR in the official layout: ``output_dir/model.safetensors`` (metadata ``{"format": "pt"}``, as
    accelerate writes it) and ``output_dir/ar_config.yaml`` with the config entries to merge into the official
    config. Returns both paths.

    ``output_dir`` may not be, contain or lie inside the folder the model was loaded from (``model.name_or_path``),
    and a non-empty ``output_dir`` is replaced only with ``overwrite``; the files are written into a sibling folder
    that is renamed into place when complete.

    >>> save_official_ar(PrologueARForCausalLM.from_pretrained("converted/ar"), "official_ar")  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    source = getattr(model, "name_or_path", None)
    inputs = {"AR folder (the model's name_or_path)": source} if source and Path(source).exists() else {}
    output_dir = check_output_dir(output_dir, inputs, overwrite)
    state, entries = ar_to_official(model, cond_dim=cond_dim)
    with staged_output_dir(output_dir) as staging:
        save_file(state, str(staging / shard_name(0)), metadata={"format": "pt"})
        with open(staging / "ar_config.yaml", "w", encoding="utf-8") as handle:
            yaml.safe_dump(entries, handle, sort_keys=False)
    return {"weights": output_dir / shard_name(0), "config": output_dir / "ar_config.yaml"}


# ------------------------------------------------------------------------------------------------------ entry point
def convert_official_checkpoint(
    config: str | Path,
    output_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    ar_dir: str | Path | None = None,
    tokenizer_weights: str | None = None,
    ar_weights: str | None = None,
    dtype: torch.dtype = torch.float32,
    save_pipeline: bool = True,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Convert an official tokenizer and/or AR of any supported family and write ``save_pretrained`` folders.

    The family comes from the config (:func:`official_family`) and is checked against the folder's keys: Prologue,
    Prologue-OneStage (its joint AR is read from ``tokenizer_dir``'s ``model_5``; give no ``ar_dir``),
    Prologue-Post (a :class:`~prologue_hf.ProloguePostModel` over the frozen 2D tokenizer), and the 1D / 2D
    baselines. Writes ``output_dir/tokenizer`` and/or ``output_dir/ar``. With both, the AR config records the
    tokenizer's ``tokenizer_identity`` and, with ``save_pipeline``, ``output_dir`` itself becomes a
    :class:`~prologue_hf.pipelines.ProloguePipeline` folder (``model_index.json`` beside the two component folders).

    ``output_dir`` may not be, contain or lie inside an input (the config file, ``tokenizer_dir``, ``ar_dir``); a
    non-empty ``output_dir`` is replaced only with ``overwrite``. Everything is converted first, then written into a
    sibling folder that is renamed onto ``output_dir`` when complete, so no stale or partial file survives.

    Args:
        tokenizer_weights, ar_weights: ``"ema"`` / ``"online"``, or ``None`` for what the official inference reads
            (the config's ``ema_reconstruction`` / ``ema_sampling``).

    Returns:
        ``{"tokenizer": path, "ar": path, "pipeline": path}`` for what was written.

    >>> convert_official_checkpoint("config.yaml", "converted", tokenizer_dir="ckpts/prologue-b-tokenizer",
    ...                             ar_dir="ckpts/ar-prologue-b-b")  # doctest: +SKIP
    """
    if tokenizer_dir is None and ar_dir is None:
        raise ValueError("give tokenizer_dir, ar_dir or both")
    output_dir = check_output_dir(
        output_dir, {"config file": config, "tokenizer_dir": tokenizer_dir, "ar_dir": ar_dir}, overwrite
    )
    official = OfficialConfig.from_yaml(config)
    family = official_family(official)
    if family == "onestage":
        if ar_dir is not None:
            raise ValueError(
                f"{official.path} describes Prologue-OneStage (continuous_training: true): its AR is the joint AR in "
                f"the tokenizer folder (model_5 / model_6); give tokenizer_dir only, not ar_dir={ar_dir}"
            )
        if tokenizer_dir is None:
            raise ValueError(f"{official.path} describes Prologue-OneStage: give tokenizer_dir (it holds the AR too)")
    tokenizer = convert_official_tokenizer(tokenizer_dir, official, tokenizer_weights, dtype=dtype) if tokenizer_dir else None
    if family == "onestage":
        ar = convert_official_joint_ar(tokenizer_dir, official, ar_weights, dtype=dtype)
    else:
        ar = convert_official_ar(ar_dir, official, ar_weights, dtype=dtype) if ar_dir else None
    if tokenizer is not None and ar is not None:
        from ..identity import tokenizer_identity
        from ..vocabulary import check_compatible

        check_compatible(tokenizer.config, ar.config)
        # Record the pair, so ids pretokenized with this tokenizer are accepted for fine-tuning this AR.
        ar.config.tokenizer_identity = tokenizer_identity(tokenizer)
    written: dict[str, Path] = {}
    with staged_output_dir(output_dir) as staging:
        for name, model in (("tokenizer", tokenizer), ("ar", ar)):
            if model is not None:
                model.save_pretrained(staging / name)
                written[name] = output_dir / name
        if tokenizer is not None and ar is not None and save_pipeline:
            # deferred: pipelines import the models
            from ..pipelines.pipeline_prologue import ProloguePipeline

            ProloguePipeline(tokenizer=tokenizer, ar=ar).save_pretrained(staging)
            written["pipeline"] = output_dir
    logger.info("wrote %s (%s family) to %s", ", ".join(written), family, output_dir)
    return written


__all__ = [
    "AR_SLOTS",
    "JOINT_AR_SLOTS",
    "OFFICIAL_FAMILIES",
    "TOKENIZER_SLOTS",
    "OfficialConfig",
    "ar_to_official",
    "convert_official_ar",
    "convert_official_checkpoint",
    "convert_official_joint_ar",
    "convert_official_tokenizer",
    "load_official_shard",
    "null_condition",
    "official_ar_config",
    "official_family",
    "official_post_config",
    "official_tokenizer_config",
    "save_official_ar",
    "shard_kind",
    "shard_name",
]
