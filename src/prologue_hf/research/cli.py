"""Command-line pieces shared by the example scripts that load a pipeline (``examples/analyze.py``,
``examples/evaluate_model.py``): the ``--pipeline`` / ``--tokenizer`` + ``--ar`` flags and the load behind
them."""

from __future__ import annotations

import argparse

import torch

from ..pipelines.pipeline_prologue import ProloguePipeline


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """``--pipeline`` (a pipeline folder or Hub id), or ``--tokenizer`` with ``--ar`` (two model folders)."""
    parser.add_argument("--pipeline", help="ProloguePipeline folder (save_pretrained) or Hub id")
    parser.add_argument("--tokenizer", help="tokenizer folder (with --ar, instead of --pipeline)")
    parser.add_argument("--ar", help="AR folder (with --tokenizer)")


def pipeline_from_args(args: argparse.Namespace, device: str | torch.device) -> ProloguePipeline:
    """The pipeline the :func:`add_pipeline_arguments` flags name, on ``device``, with its progress bar off (the
    scripts report their own progress). Missing flags exit with a message that names them. (Not
    :func:`prologue_hf.research.app.load_pipeline`, which loads one folder or Hub id for the web demo.)"""
    try:
        pipe = ProloguePipeline.from_parts(args.pipeline, args.tokenizer, args.ar)
    except ValueError as error:
        raise SystemExit(f"{error} (--pipeline, or both --tokenizer and --ar)") from error
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
