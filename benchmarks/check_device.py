"""One short check of the sampler's decode paths on an accelerator (or any device): correctness first, then speed.

Prepared for the occasional GPU machine (CI has none, and no GPU has been lent to this project yet). On ``--device``
(default: ``cuda`` when available, else ``cpu``), for fp32 and bf16:

1. packed vs stock logits of the B-size AR (random weights) over a 17-position prefill and 16 one-token steps:
   the largest absolute difference, relative to the largest logit;
2. ``generate_ids`` packed vs stock on the tiny model (greedy, guided): the share of equal ids;
3. one timed ``generate_ids`` run per decode path for the B model at ``--batch-sizes`` (CFG on every step), after a
   warm-up, with the device synchronised around the timing.

Example (about a minute on a GPU)::

    python benchmarks/check_device.py --device cuda --batch-sizes 8 32
"""

from __future__ import annotations

import argparse
import time

import torch

from prologue_hf import PrologueARConfig, PrologueARForCausalLM
from prologue_hf.pipelines.decoding import PackedARDecoder
from prologue_hf.pipelines.sampling import SamplingParams, generate_ids
from prologue_hf.testing import tiny_ar

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def logits_gap(ar: PrologueARForCausalLM, prefill: int = 17, steps: int = 16) -> float:
    """max |packed - stock| / max |stock| over a prefill and one-token steps (batch 2, random visual ids)."""
    device = ar.device
    ids = torch.randint(0, ar.config.vocabulary.visual_vocab_size, (2, prefill + steps), device=device)
    expected = ar(ids).logits.float()
    embeds = ar.get_input_embeddings()(ids)
    decoder = PackedARDecoder(ar, rows=2, max_length=prefill + steps)
    got = [decoder.forward(embeds[:, :prefill], keep=prefill)]
    got += [decoder.forward(embeds[:, t : t + 1]) for t in range(prefill, prefill + steps)]
    got = torch.cat(got, dim=1).float()
    return float((got - expected).abs().max() / expected.abs().max())


def greedy_agreement(device: torch.device, dtype: torch.dtype) -> float:
    ar = tiny_ar(seed=0).to(device=device, dtype=dtype)
    params = SamplingParams.from_preset("prologue-B-B", top_k=1)
    labels = torch.arange(8) % ar.config.num_classes
    packed = generate_ids(ar, labels, params, decoder="packed").ids
    stock = generate_ids(ar, labels, params, decoder="stock").ids
    return float((packed == stock).float().mean())


def time_run(ar: PrologueARForCausalLM, batch: int, decoder: str) -> float:
    labels = torch.arange(batch) % ar.config.num_classes
    params = SamplingParams.from_preset("prologue-B-B")
    generate_ids(ar, labels, params, generator=torch.Generator().manual_seed(0), decoder=decoder)  # warm-up
    _synchronize(ar.device)
    start = time.perf_counter()
    generate_ids(ar, labels, params, generator=torch.Generator().manual_seed(1), decoder=decoder)
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
    print("| dtype | logits gap (rel.) | tiny greedy ids equal | batch | packed s | stock s | stock / packed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        torch.manual_seed(0)
        ar = PrologueARForCausalLM(PrologueARConfig.from_preset(args.config)).eval().to(device=device, dtype=dtype)
        gap, agreement = logits_gap(ar), greedy_agreement(device, dtype)
        for batch in args.batch_sizes:
            packed, stock = time_run(ar, batch, "packed"), time_run(ar, batch, "stock")
            print(f"| {dtype_name} | {gap:.1e} | {agreement:.0%} | {batch} | {packed:.2f} | {stock:.2f} | "
                  f"{stock / packed:.2f} |", flush=True)
        del ar


if __name__ == "__main__":
    main()
