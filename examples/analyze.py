"""Analysis figures of the paper as PNG files (see docs/evaluation.md, "Analysis").

    # Fig. 6 / A2 (attention per layer) and Fig. 7 / A4 (per-prologue-token heatmaps), over real images
    python examples/analyze.py attention --pipeline PATH --data ILSVRC/imagenet-1k --split validation \\
        --num-images 64 --layers 0 2 5 7 10 11 --output-dir figs

    # ... or over the model's own samples
    python examples/analyze.py attention --pipeline PATH --classes 207 360 387 --output-dir figs

    # Fig. 1 / A3: rows with a fixed prologue, visual tokens resampled
    python examples/analyze.py resample --pipeline PATH --classes 88 207 279 --num-resamples 8 --output-dir figs

    # Fig. A1 from `examples/evaluate_model.py sweep` results (one curve per variant)
    python examples/analyze.py cfg-plot --results B-B=runs/bb/cfg_sweep.json L-XL=runs/lxl/cfg_sweep.json \\
        --output-dir figs
"""

import argparse
import json
from pathlib import Path

import torch

from prologue_hf.image_grid import image_grid
from prologue_hf.research.analysis import (
    attention_maps_for_images,
    attention_maps_for_samples,
    fixed_prologue_resampling,
    plot_attention_layers,
    plot_cfg_sweep,
    plot_prologue_heatmaps,
    prologue_heatmaps,
)
from prologue_hf.research.cli import add_pipeline_arguments, pipeline_from_args


def _classes(values: list[str]) -> list[int | str]:
    return [int(v) if v.lstrip("-").isdigit() else v for v in values]


def cmd_attention(args) -> None:
    pipe = pipeline_from_args(args, args.device)
    vocab = pipe.ar.config.vocabulary
    image = None
    if args.data:
        from prologue_hf.evaluation.dataloader import evaluation_dataloader

        loader = evaluation_dataloader(
            args.data, args.split, pipe.tokenizer.config.image_size, args.num_images, 0, args.num_images
        )
        batch = next(iter(loader))
        labels = batch["labels"].clone()
        labels[labels < 0] = vocab.num_classes  # unlabelled images: the null class
        maps = attention_maps_for_images(pipe.tokenizer, pipe.ar, batch["pixel_values"], labels)
        if len(labels) == 1:
            image = pipe.tokenizer.postprocess(batch["pixel_values"], "uint8")[0].permute(1, 2, 0).numpy()
    elif args.classes:
        generator = torch.Generator(device=args.device).manual_seed(args.seed)
        maps, images = attention_maps_for_samples(pipe, _classes(args.classes), generator, args.sampling)
        image = images[0] if len(images) == 1 else None
    else:
        raise SystemExit("give --data (real images) or --classes (the model's samples)")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plot_attention_layers(maps, vocab, output_dir / "attention_layers.png", layers=args.layers)
    if vocab.has_prologue:
        heat = prologue_heatmaps(maps, vocab, layers=args.heatmap_layers)
        plot_prologue_heatmaps(heat, output_dir / "prologue_heatmaps.png", image=image)
    torch.save({"attention": maps.half()}, output_dir / "attention_maps.pt")
    print(output_dir)


def cmd_resample(args) -> None:
    pipe = pipeline_from_args(args, args.device)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    classes = _classes(args.classes)
    rows = fixed_prologue_resampling(pipe, classes, args.num_resamples, args.sampling, generator)
    id2label = pipe.config.id2label or {}
    names = [str(id2label.get(c, id2label.get(str(c), c))).split(",")[0] for c in classes]
    output = Path(args.output_dir) / "fixed_prologue.png"
    output.parent.mkdir(parents=True, exist_ok=True)
    height = rows.shape[2]
    grid = image_grid(rows.reshape(-1, *rows.shape[2:]), rows=len(rows), labels=[*names, f"{names[0]} (free)"],
                      scale=max(1, 96 // height))  # small images get a readable figure
    grid.save(output)
    print(output)


def cmd_cfg_plot(args) -> None:
    results = {}
    for item in args.results:
        name, _, path = item.partition("=")
        results[name] = json.loads(Path(path).read_text())
    first = next(iter(results.values()))[0]
    metrics = [m for m in ("fid", "inception_score", "fd_effnet_lite0") if m in first]
    output = Path(args.output_dir) / "cfg_sweep.png"
    output.parent.mkdir(parents=True, exist_ok=True)
    plot_cfg_sweep(results, output, metrics=metrics)
    print(output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def common(p):
        add_pipeline_arguments(p)
        p.add_argument("--sampling", default=None, help="Table A5 preset (default: the pipeline's)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default=device)
        p.add_argument("--output-dir", required=True)

    p = commands.add_parser("attention", help="attention per layer + per-prologue-token heatmaps")
    common(p)
    p.add_argument("--data", help="image folder / save_to_disk folder / Hub dataset (real images)")
    p.add_argument("--split", default="validation")
    p.add_argument("--num-images", type=int, default=16, help="images averaged over")
    p.add_argument("--classes", nargs="+", help="class ids or names to sample instead of --data")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="layers to draw (paper: 0 2 5 7 10 11)")
    p.add_argument("--heatmap-layers", type=int, nargs="+", default=None, help="default: the last 8")
    p.set_defaults(func=cmd_attention)

    p = commands.add_parser("resample", help="fixed-prologue resampling grid (Fig. 1)")
    common(p)
    p.add_argument("--classes", nargs="+", required=True)
    p.add_argument("--num-resamples", type=int, default=8)
    p.set_defaults(func=cmd_resample)

    p = commands.add_parser("cfg-plot", help="gFID / IS against the visual guidance scale (Fig. A1)")
    p.add_argument("--results", nargs="+", required=True, help="NAME=path/to/cfg_sweep.json")
    p.add_argument("--output-dir", required=True)
    p.set_defaults(func=cmd_cfg_plot)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
