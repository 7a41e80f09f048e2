"""What the pipeline's tokenizer identity check costs: ``tokenizer_identity`` over a tokenizer of a preset's size.

    OMP_NUM_THREADS=1 python benchmarks/bench_identity.py --presets B L --repeats 5

The preset's state-dict shapes come from a meta-device build (no memory); the timed module holds float32 tensors of
exactly those shapes (random values: hashing does not depend on them) and the preset's config, which is what
``tokenizer_identity`` reads. Prints one markdown row per preset (docs/reliability.md, "Identity checks").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from prologue_hf import PrologueTokenizerConfig, PrologueTokenizerModel
from prologue_hf.identity import tokenizer_identity
from prologue_hf.testing import tiny_tokenizer_config


def preset_config(preset: str) -> PrologueTokenizerConfig:
    """``"tiny"`` (the test tokenizer) or a :meth:`PrologueTokenizerConfig.from_preset` name."""
    return tiny_tokenizer_config() if preset == "tiny" else PrologueTokenizerConfig.from_preset(preset)


class SizedStandIn(nn.Module):
    """Float32 buffers of the given shapes plus a ``config``: hashed exactly like a tokenizer of that size."""

    def __init__(self, shapes: dict[str, torch.Size], config: PrologueTokenizerConfig):
        super().__init__()
        for index, shape in enumerate(shapes.values()):
            self.register_buffer(f"t{index}", torch.randn(shape))
        self.config = config


def measure(preset: str, repeats: int) -> dict:
    """``{"preset", "elements", "mib", "seconds" (median), "runs"}`` of ``tokenizer_identity`` at ``preset``'s size."""
    config = preset_config(preset)
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in PrologueTokenizerModel(config).state_dict().items()}
    stand_in = SizedStandIn(shapes, config)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokenizer_identity(stand_in)
        runs.append(time.perf_counter() - start)
    elements = sum(shape.numel() for shape in shapes.values())
    return {"preset": preset, "elements": elements, "mib": elements * 4 / 2**20, "seconds": statistics.median(runs),
            "runs": runs}  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["B", "L"], help="tokenizer presets, or 'tiny'")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [measure(preset, args.repeats) for preset in args.presets]
    print("| preset | state-dict elements | float32 MiB | `tokenizer_identity` median s (runs) |")
    print("|---|---|---|---|")
    for row in rows:
        runs = ", ".join(f"{r:.2f}" for r in row["runs"])
        print(f"| {row['preset']} | {row['elements'] / 1e6:.1f}M | {row['mib']:.0f} | {row['seconds']:.2f} ({runs}) |")
    return rows


if __name__ == "__main__":
    main()
