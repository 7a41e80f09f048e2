"""Stage-2 pretokenization throughput in source images/s (run by hand; results in docs/benchmarks.md).

Writes an imagefolder of random JPEGs (ImageNet-like sizes, ``--size`` WxH), then times
:func:`prologue_hf.training.pretokenize.pretokenize_dataset` end to end: JPEG decoding, the ten-crop views
(``--crops``/``--hflip``), the tokenizer encoder on every view, and the int16 shards + merge on disk. Each source image
gives ``views`` rows (10 for ten-crop). Random weights (speed does not depend on them).

Tokenizers: ``tiny`` (``prologue_hf.testing.tiny_tokenizer``: 32px) and ``B``/``L``
(``PrologueTokenizerConfig.from_preset``: 256px, patch 16, K=16; pretokenization runs the encoder only, which is the
same 86M ViT in both). Example::

    python benchmarks/bench_pretokenize.py --tokenizers tiny B --images 8 --batch-size 4 --json pretokenize.json

``--agreement`` (with ``--dtype bfloat16``) pretokenizes the same images once more in float32 and reports the fraction
of identical ids (all, prologue, visual): bf16 encodes can pick other codes at near ties. The process's CPU seconds
are reported next to the wall time (with one thread on shared cores, what the run costs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import PIL.Image
import torch

from prologue_hf import PrologueTokenizerConfig, PrologueTokenizerModel
from prologue_hf.testing import tiny_tokenizer
from prologue_hf.training.image_data import load_image_dataset
from prologue_hf.training.pretokenize import PretokenizeConfig, pretokenize_dataset


def write_jpegs(root: str, count: int, size: tuple[int, int], classes: int = 4) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = os.path.join(root, f"class{i % classes}")
        os.makedirs(folder, exist_ok=True)
        # smooth random images (JPEG-friendly, as natural images), not white noise
        low = rng.integers(0, 256, (size[1] // 16 + 1, size[0] // 16 + 1, 3), dtype=np.uint8)
        image = PIL.Image.fromarray(low).resize(size, PIL.Image.BICUBIC)
        image.save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def build_tokenizer(name: str) -> PrologueTokenizerModel:
    if name == "tiny":
        return tiny_tokenizer()
    torch.manual_seed(0)
    return PrologueTokenizerModel(PrologueTokenizerConfig.from_preset(name)).eval()


def id_agreement(dataset, reference) -> dict[str, float]:
    """Fraction of identical ids of two pretokenized datasets of the same images (all, prologue, visual)."""
    a, b = dataset.with_format("numpy"), reference.with_format("numpy")
    order_a, order_b = (np.lexsort((d["crop_index"], d["image_index"])) for d in (a, b))
    same = {k: np.stack(a[k])[order_a] == np.stack(b[k])[order_b] for k in ("prologue_ids", "visual_ids")}
    every = np.concatenate([same["prologue_ids"], same["visual_ids"]], axis=1)
    return {"all": round(float(every.mean()), 5), "prologue": round(float(same["prologue_ids"].mean()), 5),
            "visual": round(float(same["visual_ids"].mean()), 5)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizers", nargs="+", default=["tiny", "B"], choices=["tiny", "B", "L"])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--crops", default="five", choices=["five", "center"])
    parser.add_argument("--no-hflip", action="store_true")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--agreement", action="store_true", help="also encode in float32 and compare the ids")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = []
    with tempfile.TemporaryDirectory() as root:
        write_jpegs(os.path.join(root, "images"), args.images, tuple(args.size))
        source = load_image_dataset(os.path.join(root, "images"))
        for name in args.tokenizers:
            tokenizer = build_tokenizer(name).to(device, getattr(torch, args.dtype))
            config = PretokenizeConfig(
                os.path.join(root, f"ids-{name}"),
                crops=args.crops,
                hflip=not args.no_hflip,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                shard_size=max(args.images // 2, 1),
            )
            start, cpu_start = time.perf_counter(), time.process_time()
            ds = pretokenize_dataset(tokenizer, source, config, process_index=0, num_processes=1)
            elapsed, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            results.append(
                {
                    "tokenizer": name,
                    "image_size": tokenizer.config.image_size,
                    "views_per_image": len(ds) // args.images,
                    "images": args.images,
                    "source_size": list(args.size),
                    "batch_size": args.batch_size,
                    "num_workers": args.num_workers,
                    "dtype": args.dtype,
                    "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()} threads",
                    "seconds": round(elapsed, 2),
                    "images_per_s": round(args.images / elapsed, 3),
                    "rows_per_s": round(len(ds) / elapsed, 2),
                    "cpu_seconds": round(cpu_seconds, 2),
                    "images_per_cpu_s": round(args.images / cpu_seconds, 4),
                }
            )
            if args.agreement and args.dtype != "float32":
                reference = build_tokenizer(name).to(device, torch.float32)
                config.output_dir = os.path.join(root, f"ids-{name}-float32")
                results[-1]["agreement_with_float32"] = id_agreement(
                    ds, pretokenize_dataset(reference, source, config, process_index=0, num_processes=1)
                )
            print(json.dumps(results[-1]), flush=True)
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]}}
    report["results"] = results
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
