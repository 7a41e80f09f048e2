"""One short check of the sampler on an accelerator (or any device): correctness first, then speed.

Prepared for the occasional GPU machine (CI has none). On ``--device`` (default: ``cuda`` when available, else
``cpu``), for fp32 and bf16:

1. the sampler's step logits (KV cache, packed linears where the device has them) against one teacher-forced
   forward of the B-size AR (random weights) over the ids it sampled (greedy, no guidance, 2 images): the largest
   absolute difference, relative to the largest logit;
2. ``generate_ids`` with ``pack_weights`` on and off and without a cache on the tiny model (greedy, guided): the
   share of ids equal to the plain cached run;
3. one timed ``generate_ids`` run with and without weight packing for the B model at ``--batch-sizes`` (CFG on
   every step), after a warm-up, with the device synchronised around the timing (on CUDA nothing is packed, so the
   two columns measure the same path twice).

Example (about a minute on a GPU)::

    python benchmarks/check_device.py --device cuda --batch-sizes 8 32
"""

from __future__ import annotations

import argparse
import time

import torch

from prologue_hf import PrologueARConfig, PrologueARForCausalLM
from prologue_hf.pipelines import SamplingParams, generate_ids
from prologue_hf.testing import tiny_ar

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def logits_gap(ar: PrologueARForCausalLM, batch: int = 2) -> float:
    """max |sampler - teacher forcing| / max |teacher forcing| over every step's finite logits (greedy, no guidance:
    the step logits are the conditional logits plus the segment mask)."""
    vocab = ar.config.vocabulary
    labels = torch.arange(batch) % ar.config.num_classes
    out = generate_ids(ar, labels, SamplingParams(top_k=1), return_step_logits=True)
    sequence = torch.cat([vocab.class_token_ids(labels)[:, None].to(ar.device), out.ids], dim=1)
    expected = ar(sequence[:, :-1]).logits.float() + vocab.logit_mask(device=ar.device)
    finite = torch.isfinite(expected)
    return float((out.step_logits[finite] - expected[finite]).abs().max() / expected[finite].abs().max())


def greedy_agreement(device: torch.device, dtype: torch.dtype) -> float:
    """Share of ids of the packed and the no-cache runs equal to the plain cached run (tiny model, guided)."""
    ar = tiny_ar(seed=0).to(device=device, dtype=dtype)
    params = SamplingParams.from_preset("prologue-B-B", top_k=1)
    labels = torch.arange(8) % ar.config.num_classes
    plain = generate_ids(ar, labels, params, pack_weights=False).ids
    packed = generate_ids(ar, labels, params).ids
    full = generate_ids(ar, labels, params, use_cache=False, pack_weights=False).ids
    return float(torch.cat([packed == plain, full == plain]).float().mean())


def time_run(ar: PrologueARForCausalLM, batch: int, pack_weights: bool) -> float:
    labels = torch.arange(batch) % ar.config.num_classes
    params = SamplingParams.from_preset("prologue-B-B")
    generate_ids(ar, labels, params, generator=torch.Generator().manual_seed(0), pack_weights=pack_weights)  # warm-up
    _synchronize(ar.device)
    start = time.perf_counter()
    generate_ids(ar, labels, params, generator=torch.Generator().manual_seed(1), pack_weights=pack_weights)
    _synchronize(ar.device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", default="B")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}")
    print("| dtype | logits gap (rel.) | tiny greedy ids equal | batch | packed s | plain s | plain / packed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        torch.manual_seed(0)
        ar = PrologueARForCausalLM(PrologueARConfig.from_preset(args.config)).eval().to(device=device, dtype=dtype)
        gap, agreement = logits_gap(ar), greedy_agreement(device, dtype)
        for batch in args.batch_sizes:
            packed, plain = time_run(ar, batch, True), time_run(ar, batch, False)
            print(f"| {dtype_name} | {gap:.1e} | {agreement:.0%} | {batch} | {packed:.2f} | {plain:.2f} | "
                  f"{plain / packed:.2f} |", flush=True)
        del ar


if __name__ == "__main__":
    main()
