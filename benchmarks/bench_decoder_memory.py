"""Resident memory the packed-linear swap adds on top of the model while sampling (Linux, run by hand).

Enters :func:`~prologue_hf.models.packed_linear.packed_linears` (what ``generate_ids`` does with
``pack_weights=True``) on a random-weight AR preset and reports how much the process's resident set grew across the
swap: the MKL / oneDNN packed copy of every ``nn.Linear`` weight (the model's own parameters are not copied).
Example::

    python benchmarks/bench_decoder_memory.py --config B --rows 16
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os

import torch

from prologue_hf import PrologueARConfig, PrologueARForCausalLM
from prologue_hf.models.packed_linear import packed_linears


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


def packing_growth_mb(config: str, dtype: torch.dtype, rows: int) -> tuple[float, float]:
    """(model weights MB, resident growth MB across entering ``packed_linears``)."""
    ar = PrologueARForCausalLM(PrologueARConfig.from_preset(config)).eval().to(dtype)
    weights = sum(p.numel() * p.element_size() for p in ar.parameters()) / 1e6
    gc.collect()
    release_free_heap()
    before = resident_mb()
    with packed_linears(ar, rows):
        growth = resident_mb() - before
    del ar
    gc.collect()
    return weights, growth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="B")
    parser.add_argument("--rows", type=int, default=16)
    args = parser.parse_args(argv)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        weights, growth = packing_growth_mb(args.config, dtype, args.rows)
        print(f"{args.config} {name}: weights {weights:.0f} MB, packed linears for {args.rows} rows add {growth:.0f} MB")


if __name__ == "__main__":
    main()
