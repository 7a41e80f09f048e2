"""Resident memory the packed decoder adds on top of the model (Linux, run by hand).

Builds ``PackedARDecoder`` for a random-weight AR preset and reports how much the process's resident set grew across
the constructor (fused q/k/v and gate/up copies plus the MKL / oneDNN packed layouts; the KV cache buffers are
allocated but not written yet, so they are not resident). Example::

    python benchmarks/bench_decoder_memory.py --config B --rows 16
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os

import torch

from prologue_hf import PrologueARConfig, PrologueARForCausalLM
from prologue_hf.pipelines import PackedARDecoder


def resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``), so that later allocations show up in the resident
    set instead of reusing pages that building the model freed (casting fp32 weights to bf16 frees ~half of them)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: growth may then be under-counted
        pass


def decoder_growth_mb(config: str, dtype: torch.dtype, rows: int) -> tuple[float, float]:
    """(model weights MB, resident growth MB across the decoder's constructor)."""
    ar = PrologueARForCausalLM(PrologueARConfig.from_preset(config)).eval().to(dtype)
    weights = sum(p.numel() * p.element_size() for p in ar.parameters()) / 1e6
    gc.collect()
    release_free_heap()
    before = resident_mb()
    decoder = PackedARDecoder(ar, rows, ar.config.vocabulary.num_generated_tokens)
    growth = resident_mb() - before
    del decoder, ar
    gc.collect()
    return weights, growth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="B")
    parser.add_argument("--rows", type=int, default=16)
    args = parser.parse_args(argv)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        weights, growth = decoder_growth_mb(args.config, dtype, args.rows)
        print(f"{args.config} {name}: weights {weights:.0f} MB, packed decoder for {args.rows} rows adds {growth:.0f} MB")


if __name__ == "__main__":
    main()
