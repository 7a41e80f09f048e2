"""What a small op costs right after a weight-streaming GEMM, against the same op repeated on a warm cache (run by hand).

A decode step alternates big weight reads (a ``[4224, 768]`` fp32 weight is 13 MB, more than the L2 cache) with
small ops on a few KB (norms, residual adds). This times, over ``--layers`` distinct weights at ``--rows`` rows
(MKL packed GEMM, as the packed decoder runs it):

* ``gemm``: the GEMMs alone;
* ``gemm + rms_norm`` / ``gemm + add``: each GEMM followed by one small op: the difference per GEMM is what the op
  costs straight after the weight stream;
* ``rms_norm repeated``: the same small op repeated, no GEMM in between (warm cache), per op.

The four are timed interleaved, medians of ``--repeats`` rounds.

Example::

    python benchmarks/bench_op_after_gemm.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--layers", type=int, default=30, help="distinct [4224, 768] fp32 weights")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = [torch.randn(4224, 768) for _ in range(args.layers)]
    packed = [torch.ops.mkl._mkl_reorder_linear_weight(w, args.rows) for w in weights]
    x, norm_weight = torch.randn(args.rows, 1, 768), torch.randn(768)

    def gemm(after=None, times: int = 1):
        def run():
            for w, p in zip(weights, packed):
                torch.ops.mkl._mkl_linear(x, p, w, None, args.rows)
                for _ in range(times if after else 0):
                    after()

        return run

    def norm():
        return F.rms_norm(x, (768,), norm_weight, 1e-6)

    def add():
        return x + x

    def norms_alone():
        for _ in range(args.layers * 5):
            norm()

    with torch.no_grad():
        ms = _interleaved_medians_ms(
            {"gemm": gemm(), "norm": gemm(norm), "add": gemm(add), "alone": norms_alone}, args.repeats
        )
    base, with_norm, with_add, alone = ms["gemm"], ms["norm"], ms["add"], ms["alone"]
    per = 1e3 / args.layers  # ms per pass -> us per GEMM
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {args.layers} GEMMs at {args.rows} rows")
    print(f"gemm alone: {base:.2f} ms per pass")
    print(f"rms_norm right after each gemm: +{(with_norm - base) * per:.0f} us per op")
    print(f"add right after each gemm: +{(with_add - base) * per:.0f} us per op")
    print(f"rms_norm repeated, warm cache: {alone * per / 5:.0f} us per op")


if __name__ == "__main__":
    main()
