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
   two columns measure the same path twice);
4. (``--parts training``) bf16 training steps of the three trainers (stage 1, stage 2, Prologue-Post, at
   ``--train-size``, through ``benchmarks/bench_training.py``'s ``run_cell``) eager and with ``torch_compile=True``,
   and stage 2 with activation (gradient) checkpointing: median s/step and peak memory (CUDA:
   ``max_memory_allocated``; CPU: peak RSS). These run on the Trainer's device (CUDA whenever there is one);
5. (``--parts compiled_sampling``) greedy sampling with the AR's forward under ``torch.compile`` on the
   preallocated (static-shape) KV cache against the eager run: the share of equal ids, and both run times.

Example (a few minutes on a GPU; ``--parts sampling`` alone is about a minute)::

    python benchmarks/check_device.py --device cuda --batch-sizes 8 32
    python benchmarks/check_device.py --device cpu --parts training compiled_sampling --train-size tiny \
        --compile-backend aot_eager   # what the test suite runs
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from argparse import Namespace
from pathlib import Path

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


def _bench_training():
    path = Path(__file__).with_name("bench_training.py")
    spec = importlib.util.spec_from_file_location("bench_training", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def training_checks(size: str, backend: str, steps: int = 2) -> list[dict]:
    """bf16 steps of each trainer, eager and compiled, and stage 2 with activation checkpointing (one warm-up step
    each, compilation included in it); returns one :func:`bench_training.run_cell` result per run."""
    bench = _bench_training()
    runs = [(t, c, False) for t in bench.TRAINERS for c in ("off", "on")] + [("stage2", "off", True)]
    results = []
    for trainer, compile_, checkpointing in runs:
        cell = Namespace(trainer=trainer, size=size, batch_size=bench.DEFAULT_BATCH[trainer], dtype="bf16",
                         compile=compile_, compile_backend=backend, steps=steps, warmup=1, threads=0,
                         activation_checkpointing=checkpointing)  # fmt: skip
        result = bench.run_cell(cell)
        result["activation_checkpointing"] = checkpointing
        results.append(result)
        peak = result.get("peak_cuda_allocated_mib", result["peak_rss_mib"])
        print(f"| {trainer} | {size} | bf16 | {compile_} | {'yes' if checkpointing else 'no'} | "
              f"{result['s_per_step_median']:.3f} | {peak:.0f} |", flush=True)
    return results


def compiled_sampling(device: torch.device, dtype: torch.dtype, backend: str, batch: int = 4) -> dict:
    """Greedy guided sampling of the tiny AR with ``forward`` compiled (``dynamic=False``: the preallocated cache
    keeps every shape static) against eager: share of equal ids, seconds of each (the compiled one after a warm-up
    run that compiles)."""
    ar = tiny_ar(seed=0).to(device=device, dtype=dtype).eval()
    params = SamplingParams.from_preset("prologue-B-B", top_k=1)
    labels = torch.arange(batch) % ar.config.num_classes

    def run() -> tuple[torch.Tensor, float]:
        _synchronize(device)
        start = time.perf_counter()
        ids = generate_ids(ar, labels, params, pack_weights=False).ids
        _synchronize(device)
        return ids, time.perf_counter() - start

    eager, eager_s = run()
    ar.forward = torch.compile(ar.forward, backend=backend, dynamic=False)
    try:
        run()  # compiles
        compiled, compiled_s = run()
    finally:
        del ar.forward  # back to the class's forward
    return {"ids_equal": float((compiled == eager).float().mean()), "eager_s": eager_s, "compiled_s": compiled_s}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", default="B")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--parts", nargs="+", choices=["sampling", "training", "compiled_sampling"],
                        default=["sampling", "training", "compiled_sampling"])  # fmt: skip
    parser.add_argument("--train-size", choices=["tiny", "B"], default="B", help="trainer sizes of --parts training")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of parts 4 and 5")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}")
    report = {}
    if "training" in args.parts:
        print("| trainer | size | dtype | compile | activation checkpointing | s/step | peak MiB |")
        print("| --- | --- | --- | --- | --- | ---: | ---: |")
        report["training"] = training_checks(args.train_size, args.compile_backend)
    if "compiled_sampling" in args.parts:
        print("| dtype | compiled greedy ids equal | eager s | compiled s |")
        print("| --- | ---: | ---: | ---: |")
        report["compiled_sampling"] = {}
        for dtype_name in args.dtypes:
            result = compiled_sampling(device, DTYPES[dtype_name], args.compile_backend)
            report["compiled_sampling"][dtype_name] = result
            print(f"| {dtype_name} | {result['ids_equal']:.0%} | {result['eager_s']:.2f} | {result['compiled_s']:.2f} |")
    if "sampling" not in args.parts:
        return report
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
    return report


if __name__ == "__main__":
    main()
