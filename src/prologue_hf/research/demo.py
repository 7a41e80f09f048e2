"""The embedded end-to-end run behind ``make demo`` (and the CPU mini-replication).

Stage 1 (tokenizer + compact AR; official training mode by default, ``DemoConfig.training_mode``) -> pretokenize -> stage 2 (AR) -> ``ProloguePipeline`` ->
sample grid, reconstruction grid, loss curves and a ``report.md``, all on the embedded Fashion-MNIST subset and all
through the same library calls as the ImageNet scripts (``train_tokenizer``, ``pretokenize_dataset``, ``train_ar``).
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


@dataclass
class DemoConfig:
    """Sizes and budgets of the demo (the defaults are sized for a short CPU run; report.md records its wall time).

    Attributes:
        output_dir: where everything is written.
        train_per_class / test_per_class: Fashion-MNIST images per class (the embedded subset has 1000 / 300).
        num_prologue_tokens: K; 0 trains the 2D baseline through the same code path.
        prologue_temperature: Prob-STE temperature tau of the prologue quantizer at the start of stage 1 (paper
            default 0.1 for its 1024 x 14-d codebook; docs/training.md explains why a 64 x 8-d codebook needs a
            larger tau for the same soft-max sharpness).
        prologue_temperature_end: tau at the end of stage 1, reached by an exponential anneal (None: constant tau).
        training_mode: stage-1 training of a Prologue tokenizer: ``"official"`` (the official gate/norm
            parameterisation and update order, ``training/official_trainer.py``) or ``"routed"`` (one joint step of
            the routed loss on plain gate vectors). The 2D baseline (K=0) has no compact AR and always trains as a
            plain VQ tokenizer.
        layer_scale_init: initial residual gates. The official 1e-5 leaves the prologue constant for the whole
            short run (docs/results.md); 0.1 lets it depend on the image from the first step.
        official_parametrization_init: ``"match"`` starts the official parameterisation at ``layer_scale_init``;
            ``"official"`` uses the official init (gates ~1e-5) whatever ``layer_scale_init`` says.
        codebook_init: ``"simvq"`` (official N(0, 1/dim)) or ``"normal"`` (N(0, 1)), both codebooks.
        stage1_steps / stage2_steps: optimizer steps of each stage.
        stage1_learning_rate: peak learning rate of every stage-1 optimizer (encoder, decoder, compact AR). 1e-3:
            at 2e-3 the prologue of seed 0 fell back to one constant 4-tuple by step ~80 and stayed there (no label
            information at the end; seeds 1 and 2 left it only after step ~200); at 1e-3 it left that state on
            seeds 0-4 (docs/results.md, "make demo").
        stage1_lr_hold_fraction: part of stage 1 spent at the peak learning rate (after a 5 % warmup) before the
            linear decay to a tenth of it (docs/results.md).
        fd_images: images per set for the Fréchet distance on EfficientNet-Lite0 features (0 skips it).
        samples_per_class: columns of the sample grid.
        data_source: ``"embedded"`` or ``"system"`` (Debian's full Fashion-MNIST).
    """

    output_dir: str = "demo_out"
    seed: int = 0
    data_source: str = "embedded"
    train_per_class: int = 600
    test_per_class: int = 100
    image_size: int = 32
    patch_size: int = 4
    num_prologue_tokens: int = 4
    visual_codebook_size: int = 256
    prologue_codebook_size: int = 64
    prologue_temperature: float = 0.34
    prologue_temperature_end: float | None = None
    training_mode: str = "official"
    layer_scale_init: float = 0.1
    official_parametrization_init: str = "match"
    codebook_init: str = "simvq"
    codebook_dim: int = 8
    tokenizer_width: int = 64
    tokenizer_layers: int = 2
    compact_ar_width: int = 64
    compact_ar_layers: int = 2
    ar_width: int = 128
    ar_layers: int = 4
    ar_heads: int = 4
    stage1_steps: int = 450
    stage1_batch_size: int = 32
    stage1_learning_rate: float = 1e-3
    stage1_lr_hold_fraction: float = 0.5
    ar_weight: float = 3.0
    visual_dropout: float = 0.9
    gan_weight: float = 0.0
    stage2_steps: int = 400
    stage2_batch_size: int = 48
    stage2_learning_rate: float = 2e-3
    samples_per_class: int = 8
    fd_images: int = 300
    sampling: dict = field(default_factory=lambda: {"temperature": 1.0})

    def __post_init__(self):
        if self.training_mode not in ("official", "routed"):
            raise ValueError(f"training_mode must be 'official' or 'routed', got {self.training_mode!r}")
        if self.official_parametrization_init not in ("official", "match"):
            raise ValueError(
                f"official_parametrization_init must be 'official' or 'match', got {self.official_parametrization_init!r}"
            )
        for name in ("stage1_learning_rate", "stage2_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.stage1_lr_hold_fraction < 1.0:
            raise ValueError(f"stage1_lr_hold_fraction must lie in [0, 1), got {self.stage1_lr_hold_fraction}")
        for name in ("prologue_temperature", "prologue_temperature_end"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")

    @property
    def official_stage1(self) -> bool:
        """Whether stage 1 runs in the official training mode (a Prologue tokenizer with ``training_mode='official'``)."""
        return self.training_mode == "official" and self.num_prologue_tokens > 0

    @classmethod
    def full(cls, **overrides) -> DemoConfig:
        """The longer replication-scale run (``--full``): all embedded images, wider models, 5x the steps."""
        values = dict(
            train_per_class=1000,
            test_per_class=300,
            tokenizer_width=96,
            tokenizer_layers=4,
            ar_width=192,
            ar_layers=6,
            ar_heads=6,
            stage1_steps=3000,
            stage2_steps=4000,
            fd_images=1000,
        )
        values.update(overrides)
        return cls(**values)


def _official_ar_rope_axes(head_dim: int) -> list[int]:
    """The official AR's RoPE layout scaled to ``head_dim``: ``[24, 20, 20]`` at 64 (3/8, then two even halves)."""
    first = 2 * round(head_dim * 3 / 16)
    second = (head_dim - first) // 4 * 2
    return [first, second, head_dim - first - second]


def _stage1(config: DemoConfig, train_dir: str, out: str):
    from ..training.image_data import ImageDataArguments
    from ..training.losses import PrologueStage1LossConfig
    from ..training.trainer_tokenizer import (
        PrologueStage1ModelArguments,
        PrologueTokenizerTrainingArguments,
        train_tokenizer,
    )

    heads = max(1, config.tokenizer_width // 16)
    head_dim = config.tokenizer_width // heads
    axes = [head_dim // 4 // 2 * 2, head_dim // 4 // 2 * 2]
    axes.append(head_dim - sum(axes))
    tokenizer_overrides = dict(
        image_size=config.image_size,
        patch_size=config.patch_size,
        hidden_size=config.tokenizer_width,
        num_hidden_layers=config.tokenizer_layers,
        num_attention_heads=heads,
        decoder_hidden_size=config.tokenizer_width,
        decoder_num_hidden_layers=config.tokenizer_layers,
        decoder_num_attention_heads=heads,
        rope_axes_dim=axes,
        visual_codebook_size=config.visual_codebook_size,
        prologue_codebook_size=config.prologue_codebook_size,
        num_prologue_tokens=config.num_prologue_tokens,
        prologue_temperature=config.prologue_temperature,
        codebook_dim=config.codebook_dim,
        codebook_init=config.codebook_init,
        # 1e-5 (the official init) makes a few hundred steps too short to leave the identity; see docs/results.md
        layer_scale_init=config.layer_scale_init,
    )
    ar_heads = max(1, config.compact_ar_width // 16)
    compact_ar = dict(
        hidden_size=config.compact_ar_width,
        num_hidden_layers=config.compact_ar_layers,
        num_attention_heads=ar_heads,
        tie_word_embeddings=False,
    )
    if config.official_stage1:  # the official compact AR: q/k norm and the multi-axis RoPE
        compact_ar.update(use_qk_norm=True, rope_axes_dim=_official_ar_rope_axes(config.compact_ar_width // ar_heads))
    model_args = PrologueStage1ModelArguments(
        tokenizer_overrides=json.dumps(tokenizer_overrides),
        compact_ar_preset="compact",
        compact_ar_overrides=json.dumps(compact_ar),
        num_classes=10,
    )
    tau_schedule = {}
    if config.num_prologue_tokens and config.prologue_temperature_end is not None:
        tau_schedule = dict(
            prologue_temperature_schedule="exponential",
            prologue_temperature_start=config.prologue_temperature,
            prologue_temperature_end=config.prologue_temperature_end,
            prologue_temperature_steps=config.stage1_steps,
        )
    loss_config = PrologueStage1LossConfig(
        perceptual_loss="none",  # no pretrained VGG offline: switched off explicitly, never random
        gan_weight=config.gan_weight,
        ar_weight=config.ar_weight,
        visual_dropout=config.visual_dropout,
    )
    data_args = ImageDataArguments(train_data=train_dir, random_crop=False, hflip=True)
    training_args = PrologueTokenizerTrainingArguments(
        output_dir=out,
        overwrite_output_dir=True,  # the demo owns its output folder: a second `make demo` starts over
        max_steps=config.stage1_steps,
        per_device_train_batch_size=config.stage1_batch_size,
        learning_rate=config.stage1_learning_rate,
        min_learning_rate=config.stage1_learning_rate / 10,
        warmup_steps=max(1, config.stage1_steps // 20),
        lr_hold_steps=int(config.stage1_steps * config.stage1_lr_hold_fraction),
        max_grad_norm=0.0 if config.official_stage1 else 1.0,  # the official stage 1 does not clip
        training_mode="official" if config.official_stage1 else "routed",
        official_parametrization_init=config.official_parametrization_init,
        **tau_schedule,
        ema_halflife_steps=max(1.0, config.stage1_steps / 20),
        logging_steps=max(1, config.stage1_steps // 50),
        save_strategy="no",
        reconstruction_grid_steps=0,
        use_cpu=True,
        dataloader_num_workers=0,
        report_to="none",
        seed=config.seed,
        disable_tqdm=False,
    )
    return train_tokenizer(model_args, data_args, loss_config, training_args)


def _stage2(config: DemoConfig, tokens_dir: str, tokenizer_dir: str, out: str):
    from ..training.ar_recipe import PrologueARScriptArguments, train_ar
    from ..training.trainer_ar import PrologueARTrainingArguments

    script_args = PrologueARScriptArguments(
        dataset_name_or_path=tokens_dir,
        hidden_size=config.ar_width,
        num_hidden_layers=config.ar_layers,
        num_attention_heads=config.ar_heads,
        hidden_dropout=0.1,
        embedding_dropout=0.1,
        tokenizer_name_or_path=tokenizer_dir,
        sample_class_labels=",".join(str(c) for c in range(10)),
    )
    training_args = PrologueARTrainingArguments(
        output_dir=out,
        overwrite_output_dir=True,  # the demo owns its output folder: a second `make demo` starts over
        max_steps=config.stage2_steps,
        per_device_train_batch_size=config.stage2_batch_size,
        learning_rate=config.stage2_learning_rate,
        min_learning_rate=config.stage2_learning_rate / 20,
        lr_scheduler_type="linear",
        warmup_steps=max(1, config.stage2_steps // 20),
        logging_steps=max(1, config.stage2_steps // 50),
        save_strategy="no",
        sample_steps=0,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=config.seed,
        disable_tqdm=False,
    )
    return train_ar(script_args, training_args)


def _loss_curves(stage1_history: list[dict], stage2_history: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    diagnostics = ("prologue_usage_mean", "prologue_distinct_tuples", "prologue_p_max_median", "prologue_label_mi_bits")
    has_diagnostics = any(key in row for row in stage1_history for key in diagnostics)
    fig, axes = plt.subplots(1, 3 if has_diagnostics else 2, figsize=(16 if has_diagnostics else 11, 3.8))
    for key in sorted({k for row in stage1_history for k in row}):
        points = [(row["step"], row[key]) for row in stage1_history if key in row and "step" in row]
        # routed: loss_* / ar_ce; official: the encoder step's L1 and prior CE parts, and the AR step's CE
        official = ("enc_l1_loss", "enc_semantic_prior_enc_loss", "enc_visual_prior_enc_loss", "ar_prior_ar_loss")
        if key.startswith(("loss_l1", "loss_ar", "loss_vq", "ar_ce")) or key in ("l1", "ar_ce", "loss", *official):
            if points:
                axes[0].plot(*zip(*points), label=key)
    axes[0].set_title("stage 1 (tokenizer + compact AR)")
    axes[0].set_xlabel("step")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    for key in ("loss", "prologue_loss", "visual_loss", "loss_prologue", "loss_visual"):
        points = [(row["step"], row[key]) for row in stage2_history if key in row and "step" in row]
        if points:
            axes[1].plot(*zip(*points), label=key)
    axes[1].set_title("stage 2 (AR)")
    axes[1].set_xlabel("step")
    axes[1].legend(fontsize=7)
    if has_diagnostics:  # is the prologue alive? (issue 15 collapse diagnostics of each logged stage-1 batch)
        for key in diagnostics:
            points = [(row["step"], row[key]) for row in stage1_history if key in row and "step" in row]
            if points:
                axes[2].plot(*zip(*points), label=key.removeprefix("prologue_"))
        axes[2].set_title("stage 1 prologue diagnostics (training batches)")
        axes[2].set_xlabel("step")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _history(trainer) -> list[dict]:
    return [dict(row) for row in trainer.state.log_history]


@torch.no_grad()
def _visual_nll_bits(ar, tokens, batch_size: int = 256) -> dict[str, float]:
    """Teacher-forced CE (bits/token) of the AR on pretokenized rows, per segment, with the true labels."""
    vocab = ar.vocabulary
    totals = {"prologue": 0.0, "visual": 0.0}
    counts = {"prologue": 0, "visual": 0}
    for start in range(0, len(tokens), batch_size):
        rows = tokens[start : start + batch_size]
        visual = torch.as_tensor(np.asarray(rows["visual_ids"]), dtype=torch.long)
        prologue = (
            torch.as_tensor(np.asarray(rows["prologue_ids"]), dtype=torch.long) if vocab.has_prologue else None
        )
        ids = vocab.build_sequence(torch.as_tensor(rows["label"]), visual, prologue)
        logits = ar(ids[:, :-1]).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # [B, T]
        segments = vocab.segment_ids()
        for name, seg in (("prologue", 0), ("visual", 2)):
            chosen = nll[:, segments == seg]
            totals[name] += float(chosen.sum())
            counts[name] += chosen.numel()
    return {f"{k}_bits_per_token": totals[k] / counts[k] / math.log(2) for k in totals if counts[k]}


def _pretokenize(tokenizer, tokenizer_dir: str, images_dir: str, tokens_dir: str, hflip: bool):
    """Pretokenize a ``save_to_disk`` image folder (centre view, + mirror if ``hflip``: the images are centred)."""
    from ..training.image_data import load_image_dataset
    from ..training.pretokenize import PretokenizeConfig, load_pretokenized_dataset, pretokenize_dataset

    pretokenize_dataset(
        tokenizer,
        load_image_dataset(images_dir),
        PretokenizeConfig(output_dir=tokens_dir, crops="center", crop_range=1.0, hflip=hflip, overwrite=True),
        tokenizer_name_or_path=tokenizer_dir,
        process_index=0,
        num_processes=1,
    )
    return load_pretokenized_dataset(tokens_dir)


def _sample_grid(pipe, config: DemoConfig, path: str) -> None:
    """One row per class, labelled with its name, plus one row that holds the first sample's prologue fixed and
    resamples the visual tokens (paper Fig. 1)."""
    from ..fashion_mnist import FASHION_MNIST_CLASSES
    from ..image_grid import image_grid

    generator = torch.Generator().manual_seed(config.seed)
    common = dict(num_images_per_label=config.samples_per_class, generator=generator, output_type="uint8")
    samples = pipe(list(range(len(FASHION_MNIST_CLASSES))), return_ids=True, **common)
    rows, row_labels = [samples.images], list(FASHION_MNIST_CLASSES)
    if pipe.tokenizer.config.num_prologue_tokens:
        rows.append(pipe([0], prologue_ids=samples.prologue_ids[:1], **common).images)
        row_labels.append(f"{FASHION_MNIST_CLASSES[0]}, fixed prologue")
    image_grid(torch.cat(rows), rows=len(row_labels), labels=row_labels, scale=3).save(path)


@torch.no_grad()
def _reconstruction(tokenizer, test_pixels: torch.Tensor, grid_path: str, test_labels: torch.Tensor | None = None) -> dict:
    """Reconstruction L1 / PSNR, codebook usage and prologue collapse diagnostics on the test images ``[B, 3, S, S]``
    in [-1, 1] (labels ``[B]``); writes the grid of the first 16 originals over their reconstructions."""
    from ..evaluation.reconstruction import psnr
    from ..image_grid import image_grid

    encoded = [tokenizer.encode(chunk) for chunk in test_pixels.split(256)]
    recon = torch.cat([tokenizer.decode(e.visual_ids).pixel_values for e in encoded])
    show = torch.cat([tokenizer.postprocess(test_pixels[:16], "uint8"), tokenizer.postprocess(recon[:16], "uint8")])
    image_grid(show, rows=2, labels=["original", "reconstruction"], scale=3).save(grid_path)
    # scored on the decoder's float output in [0, 1], before uint8 rounding (evaluate_reconstruction scores the
    # rounded images, as the paper's protocol does); kept so that the report stays comparable with docs/results.md
    recon01, test01 = (recon.clamp(-1, 1) + 1) / 2, (test_pixels + 1) / 2
    result = {
        "reconstruction_l1": float((recon01 - test01).abs().mean()),
        "reconstruction_psnr_db": float(psnr(recon01, test01, data_range=1.0).mean()),
        "visual_codebook": tokenizer.codebook_usage(torch.cat([e.visual_ids for e in encoded]), "visual"),
    }
    if tokenizer.config.num_prologue_tokens:
        result["prologue_codebook"] = tokenizer.codebook_usage(torch.cat([e.prologue_ids for e in encoded]), "prologue")
        from ..training.diagnostics import model_prologue_diagnostics

        labels = None if test_labels is None else test_labels[:256]
        result["prologue_diagnostics"], result["prologue_collapse_warning"] = model_prologue_diagnostics(
            tokenizer, test_pixels[:256], labels
        )
    return result


def _frechet_effnet(pipe, test_uint8: torch.Tensor, config: DemoConfig) -> dict:
    """Fréchet distance between EfficientNet-Lite0 features of class-balanced samples and of as many test images
    (the offline FD-EffNetLite0, never called FID)."""
    from ..evaluation import EfficientNetLite0Features, extract_features, frechet_distance

    per_class = max(1, min(config.fd_images, len(test_uint8)) // 10)
    generator = torch.Generator().manual_seed(config.seed + 1)
    samples = pipe(list(range(10)), num_images_per_label=per_class, generator=generator, output_type="uint8").images
    extractor = EfficientNetLite0Features().eval()
    real = extract_features(extractor, test_uint8[: per_class * 10].split(64), desc="test features")["features"]
    fake = extract_features(extractor, samples.split(64), desc="sample features")["features"]
    return {"value": frechet_distance(real, fake), "images_per_set": int(per_class * 10)}


def run_demo(config: DemoConfig) -> dict:
    """Run the whole demo; returns the report values (also written to ``output_dir/report.json`` and ``report.md``)."""
    from ..fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
    from ..models import PrologueARForCausalLM, PrologueTokenizerModel
    from ..pipelines import ProloguePipeline, SamplingParams

    start = time.time()
    out = os.path.abspath(config.output_dir)
    os.makedirs(out, exist_ok=True)
    timings: dict[str, float] = {}

    # 1. data, through the same `datasets` path as ImageNet runs (save_to_disk folders)
    train_dir, test_dir = os.path.join(out, "data", "train"), os.path.join(out, "data", "test")
    load_fashion_mnist("train", config.image_size, config.data_source, config.train_per_class).save_to_disk(train_dir)
    test_set = load_fashion_mnist("test", config.image_size, config.data_source, config.test_per_class)
    test_set.save_to_disk(test_dir)
    timings["data"] = time.time() - start

    # 2. stage 1: tokenizer + compact AR (official or routed training mode)
    t = time.time()
    stage1 = _stage1(config, train_dir, os.path.join(out, "stage1"))
    tokenizer_dir = os.path.join(out, "stage1", "tokenizer")
    tokenizer = PrologueTokenizerModel.from_pretrained(tokenizer_dir)
    timings["stage1"] = time.time() - t

    # 3. pretokenize train and test (centre view + mirror: the images are already centred)
    t = time.time()
    tokens = {split: _pretokenize(tokenizer, tokenizer_dir, folder, os.path.join(out, "tokens", split), split == "train")
              for split, folder in (("train", train_dir), ("test", test_dir))}
    timings["pretokenize"] = time.time() - t

    # 4. stage 2: the AR on the frozen tokenizer's ids
    t = time.time()
    stage2 = _stage2(config, os.path.join(out, "tokens", "train"), tokenizer_dir, os.path.join(out, "stage2"))
    ar = PrologueARForCausalLM.from_pretrained(os.path.join(out, "stage2"))
    timings["stage2"] = time.time() - t

    # 5. the pipeline folder users load with ProloguePipeline.from_pretrained
    t = time.time()
    id2label = dict(enumerate(FASHION_MNIST_CLASSES))
    sampling = SamplingParams(**config.sampling)
    pipe = ProloguePipeline(tokenizer=tokenizer, ar=ar, id2label=id2label, default_sampling=sampling)
    pipe.save_pretrained(os.path.join(out, "pipeline"))
    pipe.set_progress_bar_config(disable=True)

    # 6. sample grid: one row per class, plus one row with the first sample's prologue held fixed (paper Fig. 1)
    _sample_grid(pipe, config, os.path.join(out, "samples.png"))

    # 7. reconstruction grid and codebook usage on the test set
    test_pixels = PrologueTokenizerModel.preprocess([test_set[i]["image"] for i in range(len(test_set))])
    test_labels = torch.tensor(test_set["label"]) if "label" in test_set.column_names else None
    report = {
        "config": asdict(config),
        **_reconstruction(tokenizer, test_pixels, os.path.join(out, "reconstructions.png"), test_labels),
    }
    report["test_nll"] = _visual_nll_bits(ar.eval(), tokens["test"])

    # 8. Fréchet distance on the offline EfficientNet-Lite0 features (never called FID)
    if config.fd_images:
        test_uint8 = PrologueTokenizerModel.postprocess(test_pixels, "uint8")
        report["fd_effnet_lite0"] = _frechet_effnet(pipe, test_uint8, config)
    timings["evaluate"] = time.time() - t

    # 9. curves and report
    stage1_history, stage2_history = _history(stage1), _history(stage2)
    _loss_curves(stage1_history, stage2_history, os.path.join(out, "loss_curves.png"))
    report["stage1_last_log"] = next((row for row in reversed(stage1_history) if "loss" in row), {})
    report["stage2_last_log"] = next((row for row in reversed(stage2_history) if "loss" in row), {})
    timings["total"] = time.time() - start
    report["timings_s"] = timings
    with open(os.path.join(out, "report.json"), "w") as handle:
        json.dump(report, handle, indent=2, default=float)
    with open(os.path.join(out, "report.md"), "w") as handle:
        handle.write(_report_markdown(report))
    return report


def _report_markdown(report: dict) -> str:
    config = report["config"]
    lines = [
        "# prologue-hf demo report",
        "",
        f"Fashion-MNIST ({config['data_source']}, {config['train_per_class']} train / {config['test_per_class']} test "
        f"images per class), {config['image_size']}px, patch {config['patch_size']}, K={config['num_prologue_tokens']} "
        f"prologue tokens. Stage 1: {config['stage1_steps']} steps; stage 2: {config['stage2_steps']} steps.",
        "",
        "![samples](samples.png)",
        "",
        "Rows: one class each, labelled with its name; the last row holds the first sample's prologue fixed and "
        "resamples the visual tokens (paper Fig. 1).",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| reconstruction L1 (test, [0,1] scale) | {report['reconstruction_l1']:.4f} |",
        f"| reconstruction PSNR (test) | {report['reconstruction_psnr_db']:.2f} dB |",
        f"| visual codebook usage / perplexity | {report['visual_codebook']['usage']:.3f} / {report['visual_codebook']['perplexity']:.1f} |",
    ]
    if "prologue_codebook" in report:
        lines.append(
            f"| prologue codebook usage / perplexity | {report['prologue_codebook']['usage']:.3f} / "
            f"{report['prologue_codebook']['perplexity']:.1f} |"
        )
    diagnostics = report.get("prologue_diagnostics") or {}
    if diagnostics:  # issue 15: is the prologue alive? (first 256 test images; docs/training.md)
        shown = ", ".join(f"{k.removeprefix('prologue_')}={v:.3g}" for k, v in diagnostics.items() if "/pos" not in k)
        lines.append(f"| prologue diagnostics (256 test images) | {shown} |")
        if report.get("prologue_collapse_warning"):
            lines.append(f"| prologue collapse warning | {report['prologue_collapse_warning']} |")
    for key, value in report["test_nll"].items():
        lines.append(f"| AR test NLL, {key.replace('_', ' ')} | {value:.3f} |")
    if "fd_effnet_lite0" in report:
        fd = report["fd_effnet_lite0"]
        lines.append(
            f"| Fréchet distance on EfficientNet-Lite0 features (samples vs test, {fd['images_per_set']} each; not FID) "
            f"| {fd['value']:.2f} |"
        )
    for stage in ("stage1_last_log", "stage2_last_log"):
        row = report.get(stage) or {}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float) and not k.endswith("rate"))
        lines.append(f"| {stage.replace('_', ' ')} | {shown} |")
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in report["timings_s"].items())
    lines += ["", f"Wall time: {timings}.", "", "![reconstructions](reconstructions.png)", "", "![loss curves](loss_curves.png)", ""]
    return "\n".join(lines)


__all__ = ["DemoConfig", "run_demo"]
