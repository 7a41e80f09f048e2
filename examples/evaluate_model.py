"""Evaluate Prologue models: tokenizer reconstruction, sampling to the ADM .npz, generation metrics, CFG sweeps and
the linear probe. The exact paper protocol is in docs/evaluation.md.

    # 50 images per class (50,000) with the paper's B-B settings, sharded over all GPUs, resumable
    accelerate launch examples/evaluate_model.py sample --pipeline PATH --sampling prologue-B-B --output-dir runs/bb

    # gFID / IS / precision / recall against the ADM reference batch (InceptionV3 weights as a local file)
    python examples/evaluate_model.py metrics --samples runs/bb/samples.npz \\
        --reference VIRTUAL_imagenet256_labeled.npz --inception-weights weights-inception-2015-12-05-6726825d.pth

    # rFID / PSNR / SSIM / codebook usage on ImageNet validation
    python examples/evaluate_model.py reconstruction --tokenizer PATH --data ILSVRC/imagenet-1k --split validation \\
        --inception-weights weights-inception-2015-12-05-6726825d.pth --output-dir runs/recon

    # Fig. A1: sweep the visual guidance scale of a preset
    accelerate launch examples/evaluate_model.py sweep --pipeline PATH --sampling prologue-B-B --scales 3 3.5 3.75 4 \\
        --reference VIRTUAL_imagenet256_labeled.npz --inception-weights ... --output-dir runs/sweep

    # Table 4: linear probe on the 16 mean-pooled prologue tokens (--source visual for a 2D tokenizer)
    python examples/evaluate_model.py probe --tokenizer PATH --data ILSVRC/imagenet-1k --output-dir runs/probe

Without --inception-weights only the offline FD-EffNetLite0 is computed (a Fréchet distance on EfficientNet-Lite0
features: useful for comparisons, NOT comparable with published FIDs).
"""

import argparse
import functools
import json
from pathlib import Path

import torch
from accelerate import PartialState

from prologue_hf.evaluation import (
    ALL_METRICS,
    FD_EFFNET_LITE0,
    EfficientNetLite0Features,
    InceptionV3Features,
    compute_generation_metrics,
    evaluate_reconstruction,
    extract_probe_features,
    run_cfg_sweep,
    sample_to_npz,
    train_linear_probe,
)
from prologue_hf.evaluation.dataloader import evaluation_dataloader, num_batches
from prologue_hf.research.cli import add_pipeline_arguments, pipeline_from_args


def _write(results: dict | list, output: Path | None) -> None:
    text = json.dumps(results, indent=2)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    print(text)


def _metric_names(args) -> tuple[str, ...]:
    if args.metrics:
        return tuple(args.metrics)
    return ALL_METRICS if args.inception_weights else (FD_EFFNET_LITE0,)


def _sample_kwargs(args) -> dict:
    return dict(
        num_classes=args.num_classes,
        images_per_class=args.images_per_class,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        seed=args.seed,
    )


def cmd_sample(args) -> None:
    pipe = pipeline_from_args(args, PartialState().device)
    path = sample_to_npz(pipe, args.output_dir, sampling=args.sampling, **_sample_kwargs(args))
    if path is not None:
        print(path)


def cmd_metrics(args) -> None:
    results = compute_generation_metrics(
        args.samples,
        args.reference,
        metrics=_metric_names(args),
        inception_weights=args.inception_weights,
        batch_size=args.batch_size,
        device=args.device,
        use_reference_statistics=args.use_reference_statistics,
    )
    _write(results, args.output)


def cmd_sweep(args) -> None:
    from prologue_hf.pipelines import SamplingParams
    from prologue_hf.research.analysis import plot_cfg_sweep

    metrics = _metric_names(args)
    metric_fn = functools.partial(
        compute_generation_metrics,
        reference=args.reference,
        metrics=metrics,
        inception_weights=args.inception_weights,
        device=PartialState().device,
    )
    base = SamplingParams.from_preset(args.sampling)
    results = run_cfg_sweep(
        pipeline_from_args(args, PartialState().device), args.scales, args.output_dir, metric_fn, sampling=base,
        **_sample_kwargs(args),
    )
    if results:  # main process
        shown = [m for m in ("fid", "inception_score", FD_EFFNET_LITE0) if m in results[0]]
        plot_cfg_sweep({args.sampling: results}, Path(args.output_dir) / "cfg_sweep.png", metrics=shown)
        _write(results, None)


def cmd_reconstruction(args) -> None:
    from prologue_hf import PrologueTokenizerModel

    tokenizer = PrologueTokenizerModel.from_pretrained(args.tokenizer).to(args.device)
    loader = evaluation_dataloader(
        args.data, args.split, tokenizer.config.image_size, args.batch_size, args.num_workers, args.max_images,
        args.streaming,
    )
    extractors = {} if args.no_rfd_effnet_lite0 else {"rfd_effnet_lite0": EfficientNetLite0Features()}
    if args.inception_weights:
        extractors["rfid"] = InceptionV3Features(args.inception_weights)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = evaluate_reconstruction(
        tokenizer, loader, extractors, grid_path=output_dir / "reconstructions.png", total_batches=num_batches(loader)
    )
    _write(results.to_dict(), output_dir / "reconstruction.json")


def cmd_probe(args) -> None:
    from prologue_hf import PrologueTokenizerModel

    tokenizer = PrologueTokenizerModel.from_pretrained(args.tokenizer).to(args.device)
    size = tokenizer.config.image_size
    features = {}
    for split, limit in ((args.train_split, args.max_train_images), (args.eval_split, args.max_eval_images)):
        loader = evaluation_dataloader(args.data, split, size, args.batch_size, args.num_workers, limit, args.streaming)
        features[split] = extract_probe_features(
            tokenizer, loader, args.source, args.num_tokens, args.representation, num_batches(loader)
        )
    (train_x, train_y), (eval_x, eval_y) = features[args.train_split], features[args.eval_split]
    result = train_linear_probe(
        train_x, train_y, eval_x, eval_y, epochs=args.epochs, batch_size=args.probe_batch_size,
        learning_rate=args.learning_rate, seed=args.seed, device=args.device,
    )
    summary = {
        "source": args.source, "representation": args.representation, "num_tokens": args.num_tokens,
        "top1": result.top1, "top5": result.top5, "train_top1": result.train_top1,
        "num_train": len(train_x), "num_eval": len(eval_x),
    }
    _write(summary, Path(args.output_dir) / "probe.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def sampling(p):
        p.add_argument("--sampling", default="prologue-B-B", help="Table A5 preset name (docs/sampling.md)")
        p.add_argument("--num-classes", type=int, default=None, help="default: the AR's num_classes")
        p.add_argument("--images-per-class", type=int, default=50, help="paper / ADM protocol: 50 (50k images)")
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--shard-size", type=int, default=1000)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--output-dir", required=True)

    def inception(p):
        p.add_argument("--inception-weights", help="local TF-FID InceptionV3 weights (.pth or .safetensors)")
        p.add_argument("--metrics", nargs="+", choices=ALL_METRICS, help="default: all with weights, else FD-EffNetLite0")

    def data(p):
        p.add_argument("--data", required=True, help="image folder, save_to_disk folder or Hub dataset name")
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--num-workers", type=int, default=4)
        p.add_argument("--streaming", action="store_true")
        p.add_argument("--device", default=device)
        p.add_argument("--output-dir", required=True)

    p = commands.add_parser("sample", help="sample N images per class to samples.npz (ADM layout)")
    add_pipeline_arguments(p)
    sampling(p)
    p.set_defaults(func=cmd_sample)

    p = commands.add_parser("metrics", help="FID / IS / precision / recall / FD-EffNetLite0 of a samples .npz")
    p.add_argument("--samples", required=True)
    p.add_argument("--reference", required=True, help="ADM reference batch, e.g. VIRTUAL_imagenet256_labeled.npz")
    inception(p)
    p.add_argument("--use-reference-statistics", action="store_true", help="FID against the npz's mu / sigma")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--device", default=device)
    p.add_argument("--output", type=Path, help="write the results as JSON here")
    p.set_defaults(func=cmd_metrics)

    p = commands.add_parser("sweep", help="one sampling run + metrics per visual guidance scale (Fig. A1)")
    add_pipeline_arguments(p)
    sampling(p)
    inception(p)
    p.add_argument("--scales", type=float, nargs="+", required=True)
    p.add_argument("--reference", required=True)
    p.set_defaults(func=cmd_sweep)

    p = commands.add_parser("reconstruction", help="rFID / PSNR / SSIM / codebook usage of a tokenizer")
    p.add_argument("--tokenizer", required=True)
    data(p)
    p.add_argument("--split", default="validation")
    p.add_argument("--max-images", type=int, default=None, help="paper: all 50,000 validation images")
    p.add_argument("--inception-weights", help="adds rFID (else only rFD-EffNetLite0)")
    p.add_argument("--no-rfd-effnet-lite0", action="store_true", help="skip the offline rFD-EffNetLite0")
    p.set_defaults(func=cmd_reconstruction)

    p = commands.add_parser("probe", help="linear probe on mean-pooled tokens (Table 4)")
    p.add_argument("--tokenizer", required=True)
    data(p)
    p.add_argument("--train-split", default="train")
    p.add_argument("--eval-split", default="validation")
    p.add_argument("--max-train-images", type=int, default=None)
    p.add_argument("--max-eval-images", type=int, default=None)
    p.add_argument("--source", choices=("prologue", "visual"), default="prologue")
    p.add_argument("--num-tokens", type=int, default=None, help="default: K prologue tokens / first 16 visual")
    p.add_argument("--representation", choices=("quantized", "features", "hidden"), default="quantized")
    p.add_argument("--epochs", type=int, default=90)
    p.add_argument("--probe-batch-size", type=int, default=1024)
    p.add_argument("--learning-rate", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_probe)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
