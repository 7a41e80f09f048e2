"""The decode step's matmuls alone, per kernel: what each way of computing ``x @ W.T`` costs at few rows (run by hand).

For the B AR's matmul shapes as the sampler's packed-linear swap runs them (per layer: fused q/k/v ``[3D, D]``,
``o`` ``[D, D]``, fused gate/up ``[2I, D]``, ``down`` ``[D, I]``; then the ``[vocab, D]`` head), with distinct random
weights so every step streams all of them from memory, it times one pass of ``rows`` random rows through all of them with

* ``F.linear``: what ``nn.Linear`` does (the weight is re-packed inside the BLAS call every time);
* ``x @ W.T contiguous``: the weight stored transposed once;
* ``(W @ x.T).T``: the weight as the big operand of the product;
* ``mkl packed`` (fp32): ``torch.ops.mkl._mkl_linear`` on a weight packed once by ``_mkl_reorder_linear_weight``;
* ``onednn packed``: ``torch.ops.mkldnn._linear_pointwise`` on a weight reordered once by ``_reorder_linear_weight``.

Median of ``--repeats`` passes, reported as ms per pass and the weight bytes streamed per second. Example::

    python benchmarks/bench_linear_kernels.py --rows 2 16 64 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from prologue_hf import PrologueARConfig


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def decode_shapes(config: PrologueARConfig) -> list[tuple[int, int]]:
    """``(out, in)`` of every matmul of one decode step as the packed-linear swap runs it (q/k/v and gate/up share
    one product)."""
    hidden, inter, head_dim = config.hidden_size, config.intermediate_size, config.head_dim
    qkv = (config.num_attention_heads + 2 * config.num_key_value_heads) * head_dim
    per_layer = [(qkv, hidden), (config.num_attention_heads * head_dim, hidden), (2 * inter, hidden), (hidden, inter)]
    return per_layer * config.num_hidden_layers + [(config.vocab_size, hidden)]


def kernels(dtype: torch.dtype) -> dict:
    """name -> (prepare(weight, rows) -> state, run(x, weight, state))."""
    table = {
        "F.linear": (lambda w, rows: None, lambda x, w, state: F.linear(x, w)),
        "x @ W.T contiguous": (lambda w, rows: w.t().contiguous(), lambda x, w, state: x @ state),
        "(W @ x.T).T": (lambda w, rows: None, lambda x, w, state: (w @ x.t()).t()),
    }
    if dtype == torch.float32 and torch.backends.mkl.is_available():
        table["mkl packed"] = (
            lambda w, rows: (torch.ops.mkl._mkl_reorder_linear_weight(w, rows), rows),
            lambda x, w, state: torch.ops.mkl._mkl_linear(x, state[0], w, None, state[1]),
        )
    if torch.backends.mkldnn.is_available():
        table["onednn packed"] = (
            lambda w, rows: torch.ops.mkldnn._reorder_linear_weight(w, rows),
            lambda x, w, state: torch.ops.mkldnn._linear_pointwise(x, state, None, "none", [], ""),
        )
    return table


def _one_step(run, inputs, weights, states):
    def step():
        for x, w, state in zip(inputs, weights, states):
            run(x, w, state)

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="B", help="AR preset whose shapes are used")
    parser.add_argument("--rows", nargs="+", type=int, default=[2, 16, 64])
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = decode_shapes(PrologueARConfig.from_preset(args.config))
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {args.config}: {len(shapes)} matmuls")
    print("| dtype | rows | kernel | ms per step | weight GB/s |")
    print("| --- | ---: | --- | ---: | ---: |")
    for dtype_name in args.dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        weights = [0.02 * torch.randn(out_features, in_features, dtype=dtype) for out_features, in_features in shapes]
        nbytes = sum(w.numel() * w.element_size() for w in weights)
        for rows in args.rows:
            inputs = [torch.randn(rows, w.shape[1], dtype=dtype) for w in weights]
            for name, (prepare, run) in kernels(dtype).items():
                with torch.no_grad():
                    ms = _median_ms(_one_step(run, inputs, weights, [prepare(w, rows) for w in weights]), args.repeats)
                print(f"| {dtype_name} | {rows} | {name} | {ms:.1f} | {nbytes / ms / 1e6:.1f} |", flush=True)


if __name__ == "__main__":
    main()
