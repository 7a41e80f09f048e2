"""CPU mini-replication of the paper's main effect: Prologue vs the 2D baseline at equal budget (issue 9, part 3).

Every variant (the 2D baseline ``num_prologue_tokens=0`` and Prologue with ``K`` prologue tokens) is trained by the
same :func:`prologue_hf.research.demo.run_demo` path (stage 1 -> pretokenize -> stage 2 -> ``ProloguePipeline``) with the same
data, budget, AR size and seeds, then scored on the held-out test split:

* visual-token NLL (bits/token, teacher forced, from the demo report) and the total bits of one image's sequence;
* Fréchet distance on EfficientNet-Lite0 features (``FD-EffNetLite0``; *not* FID: no Inception weights offline)
  without guidance and with the best scale of a small classifier-free-guidance sweep (Prologue: prologue scale
  ``< 1`` as the paper's Table A5, constant visual scale; baseline: the same visual scales);
* linear-probe accuracy (paper Table 4) of the mean-pooled prologue tokens vs the baseline's first ``K`` visual
  tokens (raster order), probe trained on train-split tokens and evaluated on the test split;
* reconstruction L1 / PSNR and codebook usage (from the demo report).

Per-run results are cached in ``<output_dir>/<variant>/seed<k>/metrics.json`` so an interrupted sweep resumes.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

# metrics aggregated over seeds (key in a run's metrics -> label in tables and plots; lower/higher is better)
METRICS: dict[str, tuple[str, str]] = {
    "visual_bits_per_token": ("visual NLL (bits/token)", "lower"),
    "sequence_bits_per_image": ("total NLL (bits/image)", "lower"),
    "fd_no_cfg": ("FD-EffNetLite0 w/o CFG", "lower"),
    "fd_best_cfg": ("FD-EffNetLite0 best CFG", "lower"),
    "best_visual_scale": ("best visual CFG scale", "-"),
    "probe_top1": ("linear probe top-1 (%)", "higher"),
    "probe_hidden_top1": ("linear probe top-1, encoder hidden (%)", "higher"),
    "reconstruction_l1": ("reconstruction L1", "lower"),
    "reconstruction_psnr_db": ("reconstruction PSNR (dB)", "higher"),
    "visual_codebook_usage": ("visual codebook usage", "higher"),
    # Prologue only (issue 15 collapse diagnostics on 256 test images; docs/training.md)
    "prologue_codebook_usage": ("prologue codebook usage (test)", "higher"),
    "prologue_bits_per_token": ("prologue NLL (bits/token)", "-"),
    "prologue_distinct_tuples": ("distinct prologue tuples / image", "higher"),
    "prologue_label_mi_bits": ("I(prologue; label) (bits)", "higher"),
    "prologue_p_max_median": ("Prob-STE median p_max", "-"),
    "prologue_effective_codes_median": ("Prob-STE effective codes", "-"),
}
PROLOGUE_ONLY_METRICS = tuple(key for key in METRICS if key.startswith("prologue_"))


@dataclass
class ReplicationConfig:
    """The sweep: variants x seeds, each a :class:`~prologue_hf.research.demo.DemoConfig` run, plus the evaluation budget.

    Attributes:
        output_dir: intermediate outputs (models, tokens, samples); keep it outside the repository.
        variants: ``{"name": ..., "num_prologue_tokens": K, **other DemoConfig fields}`` per variant; every variant
            shares ``demo_overrides`` and the seeds. Default: the 2D baseline (K=0) and Prologue (K=4: 8x8 = 64
            visual tokens, the paper's 16 prologue / 256 visual ratio).
        seeds: one run per seed and variant.
        probe_tokens: visual tokens of the baseline pooled for the probe (paper Table 4: as many as the prologue).
        demo_overrides: ``DemoConfig`` fields shared by every run (steps, images, widths, ...).
        fd_images_per_class: generated images per class for each FD (the reference is the whole test split).
        visual_scales: constant visual guidance scales of the CFG sweep (``w * cond + (1 - w) * uncond``).
        prologue_scale: constant prologue guidance scale of the guided Prologue runs (paper Table A5: 0.7).
        probe_epochs: linear-probe epochs (MAE protocol: 90).
    """

    output_dir: str = "/tmp/replication/runs"
    variants: list = field(
        default_factory=lambda: [
            {"name": "baseline_2d", "num_prologue_tokens": 0},
            {"name": "prologue_k4", "num_prologue_tokens": 4},
        ]
    )
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    probe_tokens: int = 4
    demo_overrides: dict = field(default_factory=dict)
    fd_images_per_class: int = 30
    visual_scales: list = field(default_factory=lambda: [1.5, 2.0, 3.0])
    prologue_scale: float = 0.8
    probe_epochs: int = 90

    def __post_init__(self):
        names = [v.get("name") for v in self.variants]
        if not names or any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"variants must each have a unique non-empty 'name', got {names}")
        for variant in self.variants:
            if "num_prologue_tokens" not in variant:
                raise ValueError(f"variant {variant['name']!r} must set num_prologue_tokens")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if self.fd_images_per_class < 1:
            raise ValueError(f"fd_images_per_class must be >= 1, got {self.fd_images_per_class}")
        if not self.visual_scales or any(s <= 1.0 for s in self.visual_scales):
            raise ValueError(f"visual_scales must be a non-empty list of scales > 1, got {self.visual_scales}")
        if not 0.0 < self.prologue_scale:
            raise ValueError(f"prologue_scale must be > 0, got {self.prologue_scale}")


def _demo_config(config: ReplicationConfig, variant: dict, seed: int, run_dir: str):
    from .demo import DemoConfig

    values = {**config.demo_overrides, **{k: v for k, v in variant.items() if k != "name"}}
    # the demo's own FD is replaced by the CFG sweep below, so it is switched off here
    return DemoConfig(output_dir=run_dir, seed=seed, fd_images=0, **values)


def sampling_sweep(num_prologue_tokens: int, visual_scales: list, prologue_scale: float) -> dict:
    """``{name: SamplingParams}``: ``"none"`` (no guidance) and one segmented run per visual scale; Prologue models
    also guide the prologue segment with ``prologue_scale`` (paper Table A5 uses 0.7 with a cosine visual ramp;
    here both segments are constant so the baseline and Prologue share one visual schedule)."""
    from ..pipelines import GuidanceSchedule, SamplingParams

    sweep = {"none": SamplingParams()}
    for scale in visual_scales:
        prologue = GuidanceSchedule(prologue_scale) if num_prologue_tokens else None
        sweep[f"visual_{scale:g}"] = SamplingParams(prologue_guidance=prologue, visual_guidance=GuidanceSchedule(scale))
    return sweep


def _images_uint8(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    from ..evaluation import stack_images

    return stack_images(dataset["image"]), torch.as_tensor(dataset["label"]).long()


def _fd_sweep(
    config: ReplicationConfig, pipe, k: int, seed: int, reference_features: torch.Tensor, extractor, variant_name: str
) -> dict:
    """FD-EffNetLite0 without guidance and over the CFG sweep, one generator seed for every sampling setting."""
    from ..evaluation import extract_features, frechet_distance

    fd = {}
    for name, params in sampling_sweep(k, config.visual_scales, config.prologue_scale).items():
        generator = torch.Generator().manual_seed(1000 + seed)
        images = pipe(
            list(range(10)), num_images_per_label=config.fd_images_per_class, generator=generator, sampling=params,
            output_type="uint8",
        ).images
        features = extract_features(extractor, images.split(64), desc=f"features {name}")["features"]
        fd[name] = frechet_distance(reference_features, features)
        logger.info("%s seed %d: FD-EffNetLite0 %s = %.3f", variant_name, seed, name, fd[name])
    guided = {name: value for name, value in fd.items() if name != "none"}
    best = min(guided, key=guided.get)
    return {
        "fd_by_sampling": fd,
        "fd_no_cfg": fd["none"],
        "fd_best_cfg": guided[best],
        "best_visual_scale": float(best.split("_", 1)[1]),
    }


def _linear_probes(config: ReplicationConfig, tokenizer, run_dir: str, k: int, seed: int) -> dict:
    """Linear probe (paper Table 4), train split -> test split: pooled prologue tokens for Prologue, the first
    ``probe_tokens`` visual tokens (raster order) for the 2D baseline; on the quantised codes and on the encoder's
    hidden states."""
    import datasets

    from ..evaluation import extract_probe_features, train_linear_probe

    train_images, train_labels = _images_uint8(datasets.load_from_disk(os.path.join(run_dir, "data", "train")))
    test_images, test_labels = _images_uint8(datasets.load_from_disk(os.path.join(run_dir, "data", "test")))
    source = "prologue" if k else "visual"
    num_tokens = None if k else config.probe_tokens
    metrics = {}
    for key, representation in (("probe_top1", "quantized"), ("probe_hidden_top1", "hidden")):
        feats = [
            extract_probe_features(
                tokenizer, zip(images.split(256), labels.split(256)), source, num_tokens, representation
            )[0]
            for images, labels in ((train_images, train_labels), (test_images, test_labels))
        ]
        result = train_linear_probe(
            feats[0], train_labels, feats[1], test_labels, num_classes=10, epochs=config.probe_epochs, seed=seed
        )
        metrics[key] = result.top1
        metrics[key.replace("top1", "train_top1")] = result.train_top1
    metrics["probe_feature"] = f"{source} x{k or config.probe_tokens}"
    return metrics


def evaluate_run(
    config: ReplicationConfig,
    variant: dict,
    seed: int,
    reference_features: torch.Tensor,
    extractor: torch.nn.Module,
) -> dict:
    """Train one (variant, seed) through ``run_demo`` and score it; returns (and caches) the run's metrics."""
    from ..pipelines import ProloguePipeline
    from .demo import run_demo

    run_dir = os.path.join(os.path.abspath(config.output_dir), variant["name"], f"seed{seed}")
    cached = os.path.join(run_dir, "metrics.json")
    if os.path.isfile(cached):
        logger.info("%s seed %d: cached metrics in %s", variant["name"], seed, cached)
        with open(cached) as handle:
            return json.load(handle)
    start = time.time()
    demo_config = _demo_config(config, variant, seed, run_dir)
    report = run_demo(demo_config)
    train_time = time.time() - start
    k = demo_config.num_prologue_tokens

    pipe = ProloguePipeline.from_pretrained(os.path.join(run_dir, "pipeline"))
    pipe.set_progress_bar_config(disable=True)
    tokenizer = pipe.tokenizer
    num_visual = tokenizer.config.num_visual_tokens
    nll = report["test_nll"]
    metrics = {
        "variant": variant["name"],
        "seed": seed,
        "num_prologue_tokens": k,
        "visual_bits_per_token": nll["visual_bits_per_token"],
        # bits of the whole sequence after the class token (prologue + visual; the EOS is deterministic)
        "sequence_bits_per_image": nll["visual_bits_per_token"] * num_visual
        + (nll.get("prologue_bits_per_token", 0.0) * k),
        "prologue_bits_per_token": nll.get("prologue_bits_per_token"),
        "reconstruction_l1": report["reconstruction_l1"],
        "reconstruction_psnr_db": report["reconstruction_psnr_db"],
        "visual_codebook_usage": report["visual_codebook"]["usage"],
        "prologue_codebook_usage": report.get("prologue_codebook", {}).get("usage"),
        "training_mode": "official" if demo_config.official_stage1 else "routed",
        "train_seconds": train_time,
    }
    diagnostics = report.get("prologue_diagnostics") or {}
    for key in ("prologue_distinct_tuples", "prologue_label_mi_bits", "prologue_p_max_median",
                "prologue_effective_codes_median", "prologue_usage_mean"):
        metrics[key] = diagnostics.get(key)

    metrics.update(_fd_sweep(config, pipe, k, seed, reference_features, extractor, variant["name"]))
    metrics.update(_linear_probes(config, tokenizer, run_dir, k, seed))
    metrics["run_seconds"] = time.time() - start
    with open(cached, "w") as handle:
        json.dump(metrics, handle, indent=2)
    return metrics


def aggregate(runs: list[dict]) -> dict:
    """``{variant: {metric: {"mean", "std", "values"}}}`` over seeds; ``std`` is the sample std (ddof=1, 0 for one
    seed)."""
    summary: dict[str, dict] = {}
    for variant in dict.fromkeys(run["variant"] for run in runs):
        rows = [run for run in runs if run["variant"] == variant]
        summary[variant] = {}
        for key in METRICS:
            values = [float(run[key]) for run in rows if run.get(key) is not None]
            if not values:
                continue
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            summary[variant][key] = {"mean": float(np.mean(values)), "std": std, "values": values}
        sweep_names = rows[0]["fd_by_sampling"].keys()
        summary[variant]["fd_by_sampling"] = {
            name: {
                "mean": float(np.mean([r["fd_by_sampling"][name] for r in rows])),
                "std": float(np.std([r["fd_by_sampling"][name] for r in rows], ddof=1)) if len(rows) > 1 else 0.0,
            }
            for name in sweep_names
        }
    return summary


def paired_comparison(runs: list[dict], baseline: str, variant: str, key: str = "fd_no_cfg") -> dict:
    """``variant`` against ``baseline`` on ``key`` (lower is better) over the seeds both have: ``{"seeds",
    "baseline", "variant", "wins"`` (seeds where ``variant`` is lower), ``"mean_relative_change"`` (``mean(variant) /
    mean(baseline) - 1``; ``-0.15`` = 15 % lower)``}``."""
    by_seed = {name: {run["seed"]: run[key] for run in runs if run["variant"] == name} for name in (baseline, variant)}
    seeds = sorted(set(by_seed[baseline]) & set(by_seed[variant]))
    if not seeds:
        raise ValueError(f"no seed has both {baseline!r} and {variant!r} runs")
    base = [float(by_seed[baseline][s]) for s in seeds]
    other = [float(by_seed[variant][s]) for s in seeds]
    return {
        "seeds": seeds,
        "baseline": base,
        "variant": other,
        "wins": sum(o < b for o, b in zip(other, base)),
        "mean_relative_change": float(np.mean(other) / np.mean(base) - 1.0),
    }


def results_table(summary: dict) -> str:
    """Markdown table: one row per metric, one column per variant (``mean ± std``)."""
    variants = list(summary)
    lines = ["| metric | " + " | ".join(variants) + " |", "| --- |" + " --- |" * len(variants)]
    for key, (label, better) in METRICS.items():
        cells = []
        for variant in variants:
            stats = summary[variant].get(key)
            cells.append("-" if stats is None else f"{stats['mean']:.3f} ± {stats['std']:.3f}")
        arrow = {"lower": " ↓", "higher": " ↑"}.get(better, "")
        lines.append(f"| {label}{arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(summary: dict, runs: list[dict], path: str) -> None:
    """Bar plots (mean ± std, seeds as dots) of the headline metrics plus the FD-vs-CFG sweep, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["visual_bits_per_token", "sequence_bits_per_image", "fd_no_cfg", "fd_best_cfg", "probe_top1",
            "probe_hidden_top1", "reconstruction_psnr_db"]
    variants = list(summary)
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.4))
    axes = axes.ravel()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes, keys):
        for i, variant in enumerate(variants):
            stats = summary[variant].get(key)
            if stats is None:
                continue
            ax.bar(i, stats["mean"], yerr=stats["std"], color=colours[i % len(colours)], alpha=0.7, capsize=4)
            ax.scatter([i] * len(stats["values"]), stats["values"], color="k", s=10, zorder=3)
        label, better = METRICS[key]
        ax.set_title(f"{label}\n({better} is better)", fontsize=8)
        ax.set_xticks(range(len(variants)), variants, rotation=20, fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    ax = axes[-1]
    for i, variant in enumerate(variants):
        sweep = summary[variant]["fd_by_sampling"]
        xs = [1.0 if name == "none" else float(name.split("_", 1)[1]) for name in sweep]
        ax.errorbar(xs, [v["mean"] for v in sweep.values()], yerr=[v["std"] for v in sweep.values()],
                    marker="o", capsize=3, label=variant, color=colours[i % len(colours)])
    ax.set_title("FD-EffNetLite0 vs visual CFG scale\n(1 = no guidance)", fontsize=8)
    ax.set_xlabel("visual scale", fontsize=7)
    ax.legend(fontsize=6)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_replication(config: ReplicationConfig, results_path: str | None = None, figure_path: str | None = None) -> dict:
    """Train and score every (variant, seed) sequentially; returns ``{"config", "runs", "summary", "table",
    "wall_seconds"}`` (also written to ``results_path`` as JSON, with the plot at ``figure_path``)."""
    from safetensors.torch import load_file, save_file

    from ..evaluation import EfficientNetLite0Features, extract_features
    from ..fashion_mnist import load_fashion_mnist
    from .demo import DemoConfig

    start = time.time()
    os.makedirs(config.output_dir, exist_ok=True)
    base = DemoConfig(**config.demo_overrides)
    # the FD reference: the whole test split every run is evaluated on (same images for every run)
    test = load_fashion_mnist("test", base.image_size, base.data_source, base.test_per_class)
    extractor = EfficientNetLite0Features().eval()
    # cached beside the runs: the same test images every invocation (a sweep split over processes pays this once)
    cache = os.path.join(
        config.output_dir, f"reference_features_{base.data_source}_{base.image_size}px_{base.test_per_class}.safetensors"
    )
    if os.path.isfile(cache):
        reference = load_file(cache)["features"]
    else:
        reference = extract_features(extractor, _images_uint8(test)[0].split(64), desc="reference features")["features"]
        save_file({"features": reference.contiguous()}, cache + ".tmp")
        os.replace(cache + ".tmp", cache)  # complete or absent, never half written
    runs = []
    for seed in config.seeds:
        for variant in config.variants:
            logger.info("replication: %s seed %d", variant["name"], seed)
            runs.append(evaluate_run(config, variant, seed, reference, extractor))
    summary = aggregate(runs)
    baseline = next((v["name"] for v in config.variants if not v["num_prologue_tokens"]), None)
    paired = {
        v["name"]: paired_comparison(runs, baseline, v["name"])
        for v in config.variants
        if baseline is not None and v["num_prologue_tokens"]
    }
    results = {
        "config": asdict(config),
        "reference_images": len(test),
        "runs": runs,
        "summary": summary,
        "paired_fd_no_cfg": paired,
        "table": results_table(summary),
        "wall_seconds": time.time() - start,
    }
    if results_path:
        os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
        with open(results_path, "w") as handle:
            json.dump(results, handle, indent=2, default=float)
    if figure_path:
        os.makedirs(os.path.dirname(os.path.abspath(figure_path)), exist_ok=True)
        plot_results(summary, runs, figure_path)
    if any(not math.isfinite(run[key]) for run in runs for key in ("fd_no_cfg", "visual_bits_per_token")):
        logger.warning("some runs produced non-finite metrics; see %s", results_path)
    return results


__all__ = [
    "METRICS",
    "PROLOGUE_ONLY_METRICS",
    "ReplicationConfig",
    "aggregate",
    "evaluate_run",
    "paired_comparison",
    "results_table",
    "run_replication",
    "sampling_sweep",
]
