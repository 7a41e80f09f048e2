"""What a small op costs right after a weight-streaming GEMM, against the same op repeated on a warm cache (run by hand).

A decode step alternates big weight reads (a ``[4224, 768]`` weight is 13 MB in fp32, more than the 2 MB L2 cache)
with small ops on a few KB (norms, residual adds). This times, over ``--layers`` distinct weights at ``--rows`` rows
(the packed kernel the sampler's packed-linear swap uses for the dtype: MKL packed SGEMM for fp32, oneDNN's
reordered weight for bf16), each GEMM followed by one small op, against the GEMMs alone: the difference per GEMM is what the op costs
straight after the weight stream. Each op is also timed repeated on a warm cache. The ops: an ``add`` and the same
RMS norm written several ways (``F.rms_norm``; transformers' Llama form; mean of squares; ``linalg.vecdot``; a
mat-vec with a ones vector; ``vector_norm``), to tell an op's own cost from the cost of coming back to small ops
after a GEMM.

All passes are timed interleaved, medians of ``--repeats`` rounds.

Example::

    python benchmarks/bench_op_after_gemm.py --threads 2 --rows 2 --dtype fp32
    python benchmarks/bench_op_after_gemm.py --threads 2 --rows 16 --dtype bf16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

HIDDEN, EPS = 768, 1e-6


def _interleaved_medians_ms(fns: dict, repeats: int) -> dict[str, float]:
    """Median ms of each function, timed in rounds (f1, f2, f3, f1, ...) so that drift falls on all alike."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def small_ops(x: torch.Tensor, norm_weight: torch.Tensor) -> dict:
    """The small ops timed after each GEMM: name -> function of nothing (closing over ``x``)."""
    dtype = x.dtype
    ones = torch.full((HIDDEN, 1), 1.0 / HIDDEN)

    def llama():  # LlamaRMSNorm.forward
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + EPS)
        return norm_weight * y.to(dtype)

    def mean_of_squares():
        y = x.float()
        return (y * torch.rsqrt(torch.mean(y * y, -1, keepdim=True).add_(EPS))).to(dtype) * norm_weight

    def vecdot():
        y = x.float()
        return (y * torch.rsqrt(torch.linalg.vecdot(y, y).unsqueeze(-1).div_(HIDDEN).add_(EPS))).to(dtype) * norm_weight

    def matvec():
        y = x.float()
        return (y * torch.rsqrt((y * y) @ ones + EPS)).to(dtype) * norm_weight

    def vector_norm():
        y = x.float()
        norm = torch.linalg.vector_norm(y, dim=-1, keepdim=True)
        return (y * torch.rsqrt(norm.square_().div_(HIDDEN).add_(EPS))).to(dtype) * norm_weight

    return {
        "add": lambda: x + x,
        "F.rms_norm": lambda: F.rms_norm(x, (HIDDEN,), norm_weight, EPS),
        "llama rms norm": llama,
        "mean of squares": mean_of_squares,
        "vecdot": vecdot,
        "matvec": matvec,
        "vector_norm": vector_norm,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--layers", type=int, default=30, help="distinct [4224, 768] weights")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = args.rows
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    weights = [torch.randn(4224, HIDDEN, dtype=dtype) for _ in range(args.layers)]
    if dtype == torch.float32:
        packed = [torch.ops.mkl._mkl_reorder_linear_weight(w, rows) for w in weights]

        def gemm(x, p, w):
            return torch.ops.mkl._mkl_linear(x, p, w, None, rows)
    else:
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in weights]

        def gemm(x, p, w):
            return torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")

    x, norm_weight = torch.randn(rows, 1, HIDDEN, dtype=dtype), torch.randn(HIDDEN, dtype=dtype)
    ops = small_ops(x, norm_weight)

    def gemms_then(op=None):
        def run():
            for w, p in zip(weights, packed):
                gemm(x, p, w)
                if op is not None:
                    op()

        return run

    with torch.no_grad():
        ms = _interleaved_medians_ms({"gemm": gemms_then(), **{n: gemms_then(op) for n, op in ops.items()}}, args.repeats)
        warm = {}
        for name, op in ops.items():
            for _ in range(100):
                op()
            start = time.perf_counter()
            for _ in range(1000):
                op()
            warm[name] = (time.perf_counter() - start) * 1e3  # us per op
    per = 1e3 / args.layers  # ms per pass -> us per GEMM
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, {args.layers} GEMMs at {rows} rows")
    print(f"gemm alone: {ms['gemm']:.2f} ms per pass")
    print("| op | right after each GEMM (us) | repeated, warm cache (us) |")
    print("| --- | ---: | ---: |")
    for name in ops:
        print(f"| {name} | +{(ms[name] - ms['gemm']) * per:.0f} | {warm[name]:.1f} |")


if __name__ == "__main__":
    main()
