"""The command line of ``examples/pretokenize.py``: load the frozen tokenizer and the source, run, merge, push."""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
import torch
from transformers import AutoModel

from ...identity import tokenizer_identity
from ..image_data import load_image_dataset
from .hub import push_pretokenized_to_hub
from .shards import PretokenizeConfig, pretokenize_dataset


@dataclass
class PretokenizeScriptArguments:
    """Source, tokenizer and Hub options of ``examples/pretokenize.py`` (the run options are :class:`PretokenizeConfig`)."""

    dataset_name_or_path: str = field(
        default=None, metadata={"help": "Image folder, save_to_disk folder or Hub dataset (e.g. ILSVRC/imagenet-1k)."}
    )
    tokenizer_name_or_path: str = field(default=None, metadata={"help": "The frozen PrologueTokenizerModel."})
    split: str = field(default="train", metadata={"help": "Source split."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: detected)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: detected)."})
    streaming: bool = field(default=False, metadata={"help": "Stream the source (no full download)."})
    tokenizer_dtype: str = field(default="float32", metadata={"help": "float32 or bfloat16 tokenizer weights."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub dataset repo id to push the result to."})

    def __post_init__(self):
        for name in ("dataset_name_or_path", "tokenizer_name_or_path"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required")
        if self.tokenizer_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"tokenizer_dtype must be 'float32' or 'bfloat16', got {self.tokenizer_dtype!r}")


def run_pretokenize(args: PretokenizeScriptArguments, config: PretokenizeConfig) -> datasets.Dataset | None:
    """Load the tokenizer and the source, pretokenize on this process's slice, merge, optionally push.

    The tokenizer identity is computed from the float32 weights as loaded, before any cast to ``tokenizer_dtype``.
    """
    from accelerate import PartialState

    state = PartialState()
    tokenizer = AutoModel.from_pretrained(args.tokenizer_name_or_path)  # a Prologue or a Prologue-Post tokenizer
    identity = tokenizer_identity(tokenizer)  # of the weights as saved, whatever dtype they then run in
    with state.main_process_first():  # one process downloads / prepares, the others read the cache
        images = load_image_dataset(
            args.dataset_name_or_path, args.split, args.image_column, args.label_column, streaming=args.streaming
        )
    tokenizer = tokenizer.to(state.device, getattr(torch, args.tokenizer_dtype))
    result = pretokenize_dataset(
        tokenizer,
        images,
        config,
        tokenizer_name_or_path=args.tokenizer_name_or_path,
        source=args.dataset_name_or_path,
        split=args.split,
        identity=identity,
    )
    if result is not None and args.push_to_hub:
        push_pretokenized_to_hub(result, args.push_to_hub)
    return result


__all__ = ["PretokenizeScriptArguments", "run_pretokenize"]
