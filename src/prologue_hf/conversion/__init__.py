"""Checkpoint conversion: the authors' official Prologue release -> prologue-hf (and our AR back)."""

from .official import (
    AR_SLOTS,
    TOKENIZER_SLOTS,
    OfficialConfig,
    ar_to_official,
    convert_official_ar,
    convert_official_checkpoint,
    convert_official_tokenizer,
    load_official_shard,
    null_condition,
    official_ar_config,
    official_tokenizer_config,
    save_official_ar,
    shard_name,
)

__all__ = [
    "AR_SLOTS",
    "TOKENIZER_SLOTS",
    "OfficialConfig",
    "ar_to_official",
    "convert_official_ar",
    "convert_official_checkpoint",
    "convert_official_tokenizer",
    "load_official_shard",
    "null_condition",
    "official_ar_config",
    "official_tokenizer_config",
    "save_official_ar",
    "shard_name",
]
