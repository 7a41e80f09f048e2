"""Convert the authors' Prologue checkpoints (Hub repo ``Zyriix/prologue``) into prologue-hf folders.

Official -> ours (tokenizer and/or AR; with both, ``--output-dir`` also becomes a ``ProloguePipeline`` folder)::

    python examples/convert_official_checkpoint.py --config config.yaml \\
        --tokenizer-dir ckpts/prologue-b-tokenizer --ar-dir ckpts/ar-prologue-b-b --output-dir converted

The family (Prologue, Prologue-OneStage, Prologue-Post, 1D or 2D baseline) is read from the config and checked
against the folders. OneStage ships its AR inside the tokenizer folder (``model_5``): give ``--tokenizer-dir``
alone. The output folder may not be, contain or lie inside an input, and a non-empty one is replaced only with
``--overwrite`` (the new folder is written beside it and renamed into place when complete).

Ours -> official layout (AR only)::

    python examples/convert_official_checkpoint.py --reverse --ar-dir converted/ar --output-dir official_ar

``--config`` is the *resolved* official OmegaConf YAML (see docs/converting.md). All logic lives in
:mod:`prologue_hf.conversion`; this file only parses arguments.
"""

from __future__ import annotations

import argparse
import sys

import torch

from prologue_hf import PrologueARForCausalLM
from prologue_hf.conversion import AR_SLOTS, TOKENIZER_SLOTS, convert_official_checkpoint, save_official_ar

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="resolved official config YAML (required unless --reverse)")
    parser.add_argument("--tokenizer-dir", help="official tokenizer checkpoint folder (model*.safetensors)")
    parser.add_argument("--ar-dir", help="official AR checkpoint folder (or, with --reverse, our AR folder)")
    parser.add_argument("--output-dir", required=True, help="where to write the converted folders")
    parser.add_argument(
        "--tokenizer-weights", choices=sorted(TOKENIZER_SLOTS), default=None,
        help="ema: model_2/model_3; online: model/model_1 (default: the config's ema_reconstruction, what the "
        "official inference reads)",
    )
    parser.add_argument(
        "--ar-weights", choices=sorted(AR_SLOTS), default=None,
        help="online: model.safetensors (OneStage: model_5); ema: model_1 (OneStage: model_6) (default: the "
        "config's ema_sampling, what the official sampling reads)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the written weights")
    parser.add_argument("--no-pipeline", action="store_true", help="do not write the ProloguePipeline folder")
    parser.add_argument("--reverse", action="store_true", help="write our AR (--ar-dir) in the official layout")
    parser.add_argument("--cond-dim", type=int, default=32, help="with --reverse: ARModel.cond_dim to write")
    args = parser.parse_args(argv)
    if args.reverse and (args.ar_dir is None or args.tokenizer_dir is not None):
        parser.error("--reverse converts one AR: give --ar-dir (our save_pretrained folder) and no --tokenizer-dir")
    if not args.reverse and args.config is None:
        parser.error("--config is required")
    if not args.reverse and args.tokenizer_dir is None and args.ar_dir is None:
        parser.error("give --tokenizer-dir, --ar-dir or both")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.reverse:
        model = PrologueARForCausalLM.from_pretrained(args.ar_dir)
        written = save_official_ar(model, args.output_dir, cond_dim=args.cond_dim, overwrite=args.overwrite)
    else:
        written = convert_official_checkpoint(
            args.config,
            args.output_dir,
            tokenizer_dir=args.tokenizer_dir,
            ar_dir=args.ar_dir,
            tokenizer_weights=args.tokenizer_weights,
            ar_weights=args.ar_weights,
            dtype=DTYPES[args.dtype],
            save_pipeline=not args.no_pipeline,
            overwrite=args.overwrite,
        )
    for name, path in written.items():
        print(f"{name}: {path}")
    return written


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileExistsError, FileNotFoundError, NotImplementedError) as error:
        sys.exit(f"error: {error}")  # a refusal is one line on stderr and exit status 1, not a traceback
