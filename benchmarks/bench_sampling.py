"""Sampling speed of the Prologue sampler against HF baselines and this machine's limit (run by hand).

For each AR config (``tiny``: the test model; ``B``: ``PrologueARConfig.from_preset("B")``, ~115M, 273 steps),
batch size and dtype, with classifier-free guidance on every step (the ``prologue-B-B`` preset: doubled batch
throughout), it times one full sampling run of:

* ``ours``: :func:`prologue_hf.pipelines.generate_ids` as it runs by default: the model's own forward with its
  ``nn.Linear`` modules swapped for packed ones (:func:`~prologue_hf.models.packed_linear.packed_linears`) and the
  sampler's preallocated KV cache;
* ``ours_plain``: the same sampler with ``pack_weights=False`` (the model's modules as they are);
* ``hf_loop``: a plain loop over ``ar(input_ids=..., cache=DynamicCache)`` with the same CFG mix, mask and
  multinomial (what one writes with stock transformers);
* ``hf_generate``: ``ar.generate`` on the doubled batch with the segment-mask processor. ``generate`` cannot do CFG,
  so it gets the same rows and steps without the mix: same forward work, its own per-step overhead;

and reports images/s, ms per decode step, the share of the time spent inside the AR forward, the time of the model's
matmuls alone (every ``nn.Linear`` once on random rows, through ``F.linear`` and through the swapped-in
``PackedLinear`` s), the attention of a run alone (every step's SDPA calls, nothing between them; with the packed
matmuls: "kernels alone", what the run would cost if the small ops around the kernels were free), and a roofline
lower bound per step measured on this machine in the same run: ``max(bytes / bandwidth, flops / gemm_peak)`` with
``bytes`` = the matmul weights plus the KV cache read at that step, ``bandwidth`` = read bandwidth of a large
``sum``, ``gemm_peak`` = FLOP/s of a large square matmul in the same dtype.

Random weights (speed does not depend on them). ``--against OTHER_SRC`` instead times ``generate_ids`` with its
default arguments from this checkout and from another one (e.g. an older commit checked out with ``git worktree``),
each run in a fresh subprocess with ``PYTHONPATH`` set to that checkout's ``src``, alternating between the two.
Examples::

    python benchmarks/bench_sampling.py --configs tiny B --batch-sizes 1 8 32 --dtypes fp32 bf16 --json out.json
    python benchmarks/bench_sampling.py --configs B --batch-sizes 8 --dtypes fp32 --methods ours --profile
    git worktree add /tmp/old <commit>
    python benchmarks/bench_sampling.py --configs B --batch-sizes 1 8 --dtypes fp32 --against /tmp/old/src
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LogitsProcessorList

from prologue_hf import PrologueARConfig, PrologueARForCausalLM
from prologue_hf.models.packed_linear import packed_linears
from prologue_hf.pipelines import (
    PrologueSegmentLogitsProcessor,
    SamplingParams,
    generate_ids,
    top_k_filter,
    top_p_filter,
)
from prologue_hf.testing import tiny_ar

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRESET = "prologue-B-B"  # guidance on every step: the doubled batch runs from the first to the last step


# ------------------------------------------------------------------------------------------------ machine limits
def _best_time(fn, repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_machine(dtype: torch.dtype, repeats: int = 5) -> dict[str, float]:
    """Read bandwidth (bytes/s) of a 512 MB reduction and matmul FLOP/s of a 2048^3 product in ``dtype``."""
    data = torch.ones(512 * 2**20 // 4, dtype=torch.float32)  # written once, so the pages are real
    bandwidth = data.numel() * 4 / _best_time(data.sum, repeats)
    a = torch.randn(2048, 2048, dtype=dtype)
    b = torch.randn(2048, 2048, dtype=dtype)
    flops = 2 * 2048**3 / _best_time(lambda: a @ b, repeats)
    return {"read_bandwidth": bandwidth, "gemm_flops": flops}


def step_lower_bounds(ar: PrologueARForCausalLM, rows: int, limits: dict[str, float]) -> list[float]:
    """Roofline lower bound (s) of every decode step: weights + KV cache read vs matmul FLOPs."""
    config = ar.config
    element = next(ar.parameters()).element_size()
    embedding = ar.get_input_embeddings().weight.numel()  # a lookup reads `rows` rows only
    matmul_params = sum(p.numel() for p in ar.parameters() if p.ndim == 2) - embedding
    kv_width = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
    bounds = []
    for position in range(config.vocabulary.num_generated_tokens):  # step s attends to s + 1 cached positions
        context = position + 1
        nbytes = (matmul_params + rows * context * kv_width) * element
        flops = 2 * rows * matmul_params + 2 * rows * context * kv_width  # q.k and p.v
        bounds.append(max(nbytes / limits["read_bandwidth"], flops / limits["gemm_flops"]))
    return bounds


def matmul_only_seconds(ar: PrologueARForCausalLM, rows: int, packed: bool = False, repeats: int = 5) -> float:
    """Time (s) of one pass of ``rows`` random rows through every matmul of a decode step, in order, with no
    attention and no Python around them: the model's ``nn.Linear`` s (``packed=False``) or the ``PackedLinear`` s
    that ``generate_ids`` swaps in for them (``packed=True``)."""
    weight = ar.lm_head.weight

    def step(products, inputs):
        with torch.no_grad():
            for product, x in zip(products, inputs):
                product(x)

    with packed_linears(ar, rows) if packed else contextlib.nullcontext() as swapped:
        if packed:  # one call per packed product: siblings (q/k/v, gate/up) share one
            products = list({id(module.packed): module.packed for module in swapped}.values())
            widths = [product.shape[1] for product in products]
        else:
            products = [m for m in ar.modules() if isinstance(m, torch.nn.Linear)]
            widths = [m.in_features for m in products]
        inputs = [torch.randn(rows, 1, width, dtype=weight.dtype, device=weight.device) for width in widths]
        return _best_time(functools.partial(step, products, inputs), repeats)


def attention_only_seconds(ar: PrologueARForCausalLM, rows: int, repeats: int = 2) -> float:
    """Time (s) of the attention of a whole sampling run alone: for every step and layer, one
    ``scaled_dot_product_attention`` of a ``rows``-row query on the cache prefix that step reads (the sampler's
    call, on random values), with nothing between the calls. With :func:`matmul_only_seconds` this is what
    the kernels of a run cost without any of the small ops around them."""
    config = ar.config
    weight = ar.lm_head.weight
    head_dim, heads, kv_heads = config.head_dim, config.num_attention_heads, config.num_key_value_heads
    steps = config.vocabulary.num_generated_tokens
    new = functools.partial(torch.randn, dtype=weight.dtype, device=weight.device)
    queries = [new(rows, heads, 1, head_dim) for _ in range(config.num_hidden_layers)]
    keys = [new(rows, kv_heads, steps, head_dim) for _ in range(config.num_hidden_layers)]
    values = [new(rows, kv_heads, steps, head_dim) for _ in range(config.num_hidden_layers)]
    gqa = {"enable_gqa": True} if kv_heads != heads else {}

    def run():
        with torch.no_grad():
            for context in range(1, steps + 1):  # step s attends to s + 1 cached positions (as step_lower_bounds)
                for q, k, v in zip(queries, keys, values):
                    F.scaled_dot_product_attention(q, k[:, :, :context], v[:, :, :context], **gqa)

    return _best_time(run, repeats)


# ------------------------------------------------------------------------------------------------ methods
def run_ours(ar, labels, generator):
    return generate_ids(ar, labels, SamplingParams.from_preset(PRESET), generator=generator).ids


def run_ours_plain(ar, labels, generator):
    return generate_ids(ar, labels, SamplingParams.from_preset(PRESET), generator=generator, pack_weights=False).ids


def run_hf_loop(ar, labels, generator):
    """Stock transformers: DynamicCache (grows by concatenation), input_ids in, CFG + mask + multinomial."""
    vocab = ar.config.vocabulary
    params = SamplingParams.from_preset(PRESET)
    weights, settings = params.guidance_weights(vocab), params.step_settings(vocab)
    mask = vocab.logit_mask(device=ar.device)
    batch = labels.shape[0]
    tokens = torch.cat([vocab.class_token_ids(labels), torch.full_like(labels, vocab.null_class_id)])[:, None]
    cache = DynamicCache(config=ar.config)
    out = []
    for step in range(vocab.num_generated_tokens):
        logits = ar(input_ids=tokens, cache=cache, use_cache=True).logits[:, -1].float()
        w = weights[step]
        mixed = w * logits[:batch] + (1 - w) * logits[batch:] if w is not None else logits[:batch]
        temperature, top_k, top_p = settings[step]
        mixed = top_p_filter(top_k_filter(mixed / temperature + mask[step], top_k), top_p)
        next_ids = torch.multinomial(mixed.softmax(-1), 1, generator=generator)
        out.append(next_ids)
        tokens = next_ids.repeat(2, 1)
    return torch.cat(out, 1)


def run_hf_generate(ar, labels, generator):
    """``generate`` on the doubled batch (no CFG possible there): the same rows and steps as the others."""
    vocab = ar.config.vocabulary
    prompt = torch.cat([vocab.class_token_ids(labels), torch.full_like(labels, vocab.null_class_id)])[:, None]
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    return ar.generate(
        input_ids=prompt.to(ar.device),
        do_sample=True,
        top_k=0,
        max_new_tokens=vocab.num_generated_tokens,
        logits_processor=LogitsProcessorList([PrologueSegmentLogitsProcessor(vocab)]),
    )


METHODS = {"ours": run_ours, "ours_plain": run_ours_plain, "hf_loop": run_hf_loop, "hf_generate": run_hf_generate}


# ------------------------------------------------------------------------------------------------ timing
class ForwardTimer:
    """Wall time spent inside the AR forward: ``PrologueARForCausalLM.forward`` is wrapped at class level while it
    lives (a module hook on the root would do too; this keeps the model object untouched)."""

    def __init__(self):
        self.total = 0.0
        self._originals = [(cls, cls.forward) for cls in (PrologueARForCausalLM,)]
        for cls, original in self._originals:
            cls.forward = self._timed(original)

    def _timed(self, original):
        @functools.wraps(original)
        def forward(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - start

        return forward

    def remove(self):
        for cls, original in self._originals:
            cls.forward = original


def build_ar(name: str, dtype: torch.dtype) -> PrologueARForCausalLM:
    torch.manual_seed(0)
    if name == "tiny":
        ar = tiny_ar(seed=0)
    elif name in ("B", "L", "XL", "compact"):
        ar = PrologueARForCausalLM(PrologueARConfig.from_preset(name)).eval()
    else:
        raise ValueError(f"unknown config {name!r}")
    return ar.to(dtype)


def time_methods(methods: list[str], ar, batch: int, repeats: int) -> dict[str, dict[str, float]]:
    """Time every method ``repeats`` times, interleaved (m1, m2, m3, m1, m2, ...) so that load from other processes
    falls on all of them alike; one warm-up run of each first (allocator, oneDNN kernels). Keeps the best run."""
    labels = torch.arange(batch) % ar.config.num_classes
    steps = ar.config.vocabulary.num_generated_tokens
    timer = ForwardTimer()
    runs = {method: [] for method in methods}  # (seconds, forward share)
    try:
        for repeat in range(repeats + 1):
            for method in methods:
                timer.total = 0.0
                generator = torch.Generator().manual_seed(repeat)
                start = time.perf_counter()
                with torch.no_grad():
                    METHODS[method](ar, labels, generator)
                elapsed = time.perf_counter() - start
                if repeat:
                    runs[method].append((elapsed, timer.total / elapsed))
    finally:
        timer.remove()
    out = {}
    for method, timings in runs.items():
        best, share = min(timings)
        out[method] = {
            "seconds": best,
            "seconds_median": statistics.median(t for t, _ in timings),
            "images_per_s": batch / best,
            "ms_per_step": 1e3 * best / steps,
            "forward_share": share,
        }
    return out


# ------------------------------------------------------------------------------------------------ A/B of checkouts
# Run in a fresh interpreter with PYTHONPATH = a checkout's src: only names every version of the package has.
_CHECKOUT_RUN = """
import sys, time, torch
from prologue_hf import PrologueARConfig, PrologueARForCausalLM
from prologue_hf.pipelines import SamplingParams, generate_ids
from prologue_hf.testing import tiny_ar
config, dtype, batch, threads, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(0)
ar = tiny_ar(seed=0) if config == "tiny" else PrologueARForCausalLM(PrologueARConfig.from_preset(config)).eval()
ar = ar.to({"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
labels = torch.arange(batch) % ar.config.num_classes
params = SamplingParams.from_preset(sys.argv[6])
with torch.no_grad():
    generate_ids(ar, labels, params, generator=torch.Generator().manual_seed(seed))  # warm-up
    start, start_cpu = time.perf_counter(), time.process_time()
    generate_ids(ar, labels, params, generator=torch.Generator().manual_seed(seed))
    print(time.perf_counter() - start, time.process_time() - start_cpu)
"""


def time_checkouts(
    sources: dict[str, str], config: str, dtype: str, batch: int, repeats: int, threads: int | None
) -> dict[str, list[float]]:
    """Wall seconds of one ``generate_ids`` run (default arguments, after a warm-up run in the same process) per
    checkout, ``repeats`` rounds alternating between the checkouts (``sources``: name -> ``src`` folder), each run
    in its own subprocess so that the two versions of the package never meet. The process's CPU seconds of each run
    go to ``"<name>_cpu"`` (with one thread, a measure that time-slicing by other jobs does not inflate)."""
    times: dict[str, list[float]] = {key: [] for name in sources for key in (name, f"{name}_cpu")}
    for round_index in range(repeats):
        for name, src in sources.items():
            env = {**os.environ, "PYTHONPATH": src}
            command = [sys.executable, "-c", _CHECKOUT_RUN, config, dtype, str(batch), str(threads or 0),
                       str(round_index), PRESET]
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            wall, cpu = (float(value) for value in out.stdout.split()[-2:])
            times[name].append(wall)
            times[f"{name}_cpu"].append(cpu)
            print(f"{config} {dtype} batch {batch} round {round_index} {name}: {wall:.2f} s wall, {cpu:.2f} s CPU",
                  flush=True)
    return times


def compare_checkouts(args) -> list[dict]:
    """The ``--against`` mode: this checkout vs another, per config / dtype / batch; rows with best and median."""
    sources = {"this": str(Path(__file__).resolve().parents[1] / "src"), "against": args.against}
    results = []
    for dtype in args.dtypes:
        for config in args.configs:
            for batch in args.batch_sizes:
                times = time_checkouts(sources, config, dtype, batch, args.repeats, args.threads)
                row = {"config": config, "dtype": dtype, "batch": batch, "times": times}
                for name, values in times.items():
                    row[f"{name}_best"], row[f"{name}_median"] = min(values), statistics.median(values)
                row["this_over_against_median"] = row["this_median"] / row["against_median"]
                row["this_over_against_cpu_median"] = row["this_cpu_median"] / row["against_cpu_median"]
                results.append(row)
                print(f"| {config} | {dtype} | {batch} | {row['against_median']:.2f} ({row['against_best']:.2f}) | "
                      f"{row['this_median']:.2f} ({row['this_best']:.2f}) | {row['this_over_against_median']:.3f} | "
                      f"{row['against_cpu_median']:.2f} | {row['this_cpu_median']:.2f} | "
                      f"{row['this_over_against_cpu_median']:.3f} |", flush=True)
    return results


def profile_ours(ar, batch: int, rows: int = 25) -> str:
    from torch.profiler import ProfilerActivity, profile

    labels = torch.arange(batch) % ar.config.num_classes
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate_ids(ar, labels, SamplingParams.from_preset(PRESET), generator=torch.Generator().manual_seed(0))
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def markdown_table(rows: list[dict]) -> str:
    """The result rows as the markdown table of ``docs/benchmarks.md``."""
    lines = [
        "| config | dtype | batch (rows) | method | s / run (median) | images/s | ms / step | forward | "
        "matmuls alone, packed (ms/step) | kernels alone s | bound s (ms/step) | x bound |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['dtype']} | {r['batch']} ({r['rows']}) | `{r['method']}` | {r['seconds']:.2f} "
            f"({r['seconds_median']:.2f}) | {r['images_per_s']:.2f} | {r['ms_per_step']:.1f} | "
            f"{100 * r['forward_share']:.0f}% | {r['packed_matmul_only_ms_per_step']:.1f} | "
            f"{r['kernels_only_seconds']:.2f} | "
            f"{r['bound_seconds']:.2f} ({r['bound_ms_per_step']:.1f}) | {r['x_bound']:.2f} |"
        )
    return "\n".join(lines)


def bench_cell(ar, config_name: str, dtype_name: str, batch: int, limits: dict, args) -> list[dict]:
    """The rows of one (config, dtype, batch) cell: the kernel floors, then every method timed interleaved."""
    steps = ar.config.vocabulary.num_generated_tokens
    params = sum(p.numel() for p in ar.parameters())
    bound = sum(step_lower_bounds(ar, 2 * batch, limits))
    matmul_ms = 1e3 * matmul_only_seconds(ar, 2 * batch)
    packed_ms = 1e3 * matmul_only_seconds(ar, 2 * batch, packed=True)
    attention_s = attention_only_seconds(ar, 2 * batch)
    kernels_s = packed_ms * steps / 1e3 + attention_s
    print(f"{config_name:>4} {dtype_name} batch {batch:>2}: matmuls alone {matmul_ms:.2f} ms/step "
          f"({matmul_ms * steps / 1e3:.2f} s per run), packed {packed_ms:.2f} ms/step "
          f"({packed_ms * steps / 1e3:.2f} s per run); attention alone {attention_s:.2f} s per run; "
          f"kernels alone (packed matmuls + attention) {kernels_s:.2f} s per run", flush=True)
    timings = time_methods(args.methods, ar, batch, args.repeats)
    rows = []
    for method in args.methods:
        row = {
            "config": config_name, "params_M": params / 1e6, "dtype": dtype_name, "batch": batch,
            "rows": 2 * batch, "steps": steps, "method": method, **timings[method],
            "bound_seconds": bound, "bound_ms_per_step": 1e3 * bound / steps,
            "read_bandwidth_GBs": limits["read_bandwidth"] / 1e9,
            "gemm_GFLOPs": limits["gemm_flops"] / 1e9,
            "matmul_only_ms_per_step": matmul_ms,
            "packed_matmul_only_ms_per_step": packed_ms,
            "attention_only_seconds": attention_s,
            "kernels_only_seconds": kernels_s,
        }
        row["x_bound"] = row["seconds"] / bound
        rows.append(row)
        print(
            f"{config_name:>4} {dtype_name} batch {batch:>2} {method:>11}: {row['seconds']:7.2f} s "
            f"(median {row['seconds_median']:7.2f}) {row['images_per_s']:7.2f} img/s "
            f"{row['ms_per_step']:7.2f} ms/step (forward {100 * row['forward_share']:.0f}%) "
            f"bound {row['bound_seconds']:7.3f} s {row['bound_ms_per_step']:7.3f} ms/step "
            f"-> {row['x_bound']:.2f}x",
            flush=True,
        )
    if args.profile:
        print(profile_ours(ar, batch))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "B"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed runs per method and cell, interleaved, after one warm-up (best kept)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of `ours` per cell")
    parser.add_argument("--json", default=None, help="write all rows to this file")
    parser.add_argument("--markdown", action="store_true", help="print all rows as a markdown table at the end")
    parser.add_argument(
        "--against", default=None, metavar="OTHER_SRC",
        help="A/B mode: time generate_ids of this checkout against the package under OTHER_SRC, alternating "
        "subprocesses (--repeats rounds; --methods is ignored)",
    )
    args = parser.parse_args(argv)
    if args.against:
        results = compare_checkouts(args)
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        results = []
        for dtype_name in args.dtypes:
            limits = measure_machine(DTYPES[dtype_name])
            print(f"# {dtype_name}: read bandwidth {limits['read_bandwidth'] / 1e9:.1f} GB/s, "
                  f"matmul {limits['gemm_flops'] / 1e9:.0f} GFLOP/s")
            for config_name in args.configs:
                ar = build_ar(config_name, DTYPES[dtype_name])
                for batch in args.batch_sizes:
                    results += bench_cell(ar, config_name, dtype_name, batch, limits, args)
        if args.markdown:
            print(markdown_table(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return results


if __name__ == "__main__":
    main()
