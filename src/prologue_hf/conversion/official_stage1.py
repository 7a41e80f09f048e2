"""Official stage-1 checkpoints -> prologue-hf models in the official *training* parameterisation.

An official stage-1 run (``train_tokenizer.py``) saves eight accelerate slots (SPEC.md section 4; the step fixture's
README): ``model`` encoder, ``model_1`` decoder, ``model_2`` / ``model_3`` their EMAs, ``model_4`` the GAN
discriminator, ``model_5`` the joint compact AR, ``model_6`` its EMA, ``model_7`` the frozen AR copy.
:func:`load_official_stage1` reads the encoder/decoder/AR triple of either the online or the EMA slots, checks every
key and shape against the config (through the inference converter), and returns the models with their gates and norm
scales *unfolded* into the official ``W c + b`` form (:mod:`prologue_hf.models.official_parametrization`), so that
training continues exactly as the official code would. :func:`~prologue_hf.models.official_parametrization.
fold_official_parametrization` turns them back into the plain models the pipelines use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..models import PrologueARForCausalLM, PrologueTokenizerModel
from ..models.official_parametrization import (
    OfficialParameterMap,
    parametrize_official_ar,
    parametrize_official_tokenizer,
)
from .official import (
    _build_ar,
    _build_tokenizer,
    _load_tokenizer_shards,
    load_official_shard,
    shard_name,
)
from .official_config import OfficialConfig, official_family, official_tokenizer_config

# (encoder, decoder, joint AR) slots of an official stage-1 checkpoint folder
STAGE1_SLOTS = {"online": (0, 1, 5), "ema": (2, 3, 6)}
STAGE1_DISCRIMINATOR_SLOT = 4
STAGE1_FROZEN_AR_SLOT = 7
# official keys that are buffers, not trained parameters
_BUFFER_KEYS = ("quantizer.pos_select_mask", "semantic_quantizer.pos_select_mask", "uncond_ar_labels", "logit_mask")


@dataclass
class OfficialStage1Models:
    """The three trained modules of an official stage-1 checkpoint, in the official training parameterisation.

    Attributes:
        tokenizer: :class:`PrologueTokenizerModel` (encoder + quantizers + decoder), parametrized.
        ar: the joint compact :class:`PrologueARForCausalLM`, parametrized.
        encoder_map, decoder_map, ar_map: official name -> our tensors (official ``named_parameters()`` order).
        config: the official config.
    """

    tokenizer: PrologueTokenizerModel
    ar: PrologueARForCausalLM
    encoder_map: OfficialParameterMap
    decoder_map: OfficialParameterMap
    ar_map: OfficialParameterMap
    config: OfficialConfig

    def maps(self) -> dict[str, OfficialParameterMap]:
        """``{"enc": ..., "dec": ..., "ar": ...}``."""
        return {"enc": self.encoder_map, "dec": self.decoder_map, "ar": self.ar_map}


def write_official_state(official_map: OfficialParameterMap, state: dict[str, torch.Tensor], path: Path | str) -> None:
    """Set our tensors from an official state dict; every official parameter must be present and every key used."""
    names = set(official_map.names())
    for key in sorted(state):
        if key not in names and key not in _BUFFER_KEYS:
            raise ValueError(f"{path}: key {key!r} has no place in the official training parameterisation")
    for name in official_map.names():
        if name not in state:
            raise ValueError(f"{path}: missing official parameter {name!r}")
        official_map.write(name, state[name].float())


def official_state(official_map: OfficialParameterMap) -> dict[str, torch.Tensor]:
    """Our tensors as an official state dict (parameters only, official names)."""
    return {name: official_map.read(name).clone() for name in official_map.names()}


def load_official_stage1(
    checkpoint_dir: str | Path, config: OfficialConfig | str | Path, weights: str = "online"
) -> OfficialStage1Models:
    """Load encoder, decoder and joint AR of an official stage-1 checkpoint for training.

    Args:
        checkpoint_dir: the folder of accelerate shards (``model.safetensors`` ... ``model_7.safetensors``).
        config: the resolved official stage-1 config (``config.yaml``).
        weights: ``"online"`` (slots 0, 1, 5) or ``"ema"`` (slots 2, 3, 6).

    Returns:
        :class:`OfficialStage1Models` (float32). The discriminator (slot 4) is not read: see
        :func:`load_official_stage1_discriminator`.
    """
    if weights not in STAGE1_SLOTS:
        raise ValueError(f"weights must be one of {sorted(STAGE1_SLOTS)}, got {weights!r}")
    config = config if isinstance(config, OfficialConfig) else OfficialConfig.from_yaml(config)
    family = official_family(config)
    if family not in ("prologue", "onestage"):
        raise NotImplementedError(
            f"{config.path}: official stage-1 training is implemented for the Prologue tokenizer (prologue / onestage families), "
            f"not the {family!r} family"
        )
    enc_slot, dec_slot, ar_slot = STAGE1_SLOTS[weights]
    enc_state, enc_path, dec_state, dec_path, _ = _load_tokenizer_shards(
        checkpoint_dir, config, family, None, enc_slot, dec_slot
    )
    ours_config = official_tokenizer_config(config, family)
    tokenizer = _build_tokenizer(enc_state, enc_path, dec_state, dec_path, config, ours_config, torch.float32)
    ar_state, ar_path = load_official_shard(checkpoint_dir, ar_slot, f"joint AR, {weights} weights")
    ar = _build_ar(dict(ar_state), ar_path, config, torch.float32)

    gate_bias = "enc.layers.0.gate1.bias" in enc_state or not config.size("Encoder.layer_num")
    enc_map, dec_map = parametrize_official_tokenizer(
        tokenizer, config.size("Encoder.cond_dim"), config.size("Encoder.cond_input_dim"), gate_bias=gate_bias
    )
    if config.size("Decoder.cond_dim") != config.size("Encoder.cond_dim"):
        raise NotImplementedError("encoder and decoder with different cond_dim are not supported")
    ar_map = parametrize_official_ar(ar, config.size("ARModel.cond_dim"), ar_state["uncond_ar_labels"].reshape(-1))
    write_official_state(enc_map, enc_state, enc_path)
    write_official_state(dec_map, dec_state, dec_path)
    write_official_state(ar_map, ar_state, ar_path)
    return OfficialStage1Models(tokenizer.train(), ar.train(), enc_map, dec_map, ar_map, config)


def load_official_stage1_discriminator(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """The official GAN discriminator slot (``model_4``). Its architecture (the official ``GANLoss``) is not the one of
    :class:`~prologue_hf.models.discriminator.PrologueDiscriminator`, so no mapping exists."""
    path = Path(checkpoint_dir) / shard_name(STAGE1_DISCRIMINATOR_SLOT)
    raise NotImplementedError(
        f"{path}: the official GAN discriminator (GANLoss, slot {STAGE1_DISCRIMINATOR_SLOT}) has no prologue-hf "
        "counterpart; train a fresh PrologueDiscriminator (the official stage 1 starts its GAN late, gan_start)"
    )


__all__ = [
    "OfficialStage1Models",
    "STAGE1_SLOTS",
    "load_official_stage1",
    "load_official_stage1_discriminator",
    "official_state",
    "write_official_state",
]
