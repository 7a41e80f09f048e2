"""Training throughput of the three trainers, per optimizer step (run by hand; results in docs/benchmarks.md).

Each cell (trainer x dtype x compile) runs in its own subprocess, so its peak resident memory is its own, through the
real training path: a ``transformers.Trainer`` subclass with its data collator, loss, optimizer groups, schedule and
EMA; ``--warmup`` untimed optimizer steps (they include ``torch.compile``'s compilation), then ``--steps`` timed ones.

Trainers (``--size B``: the paper's Base configurations, read from ``examples/configs``):

* ``stage1``: the B tokenizer + the compact AR of ``tokenizer_B.yaml`` (512 x 7, untied), 256 px images decoded from
  PNG and augmented by the training collator, in the training mode of ``--stage1-mode``: ``config`` (default) takes
  the recipe's ``training_mode`` (``tokenizer_B.yaml``: ``official``; tiny: ``routed``), ``official`` is
  :class:`OfficialPrologueTokenizerTrainer` (official parameterisation, an encoder + decoder step with the AR frozen,
  then an AR step on the same ids), ``routed`` is :class:`PrologueTokenizerTrainer` (one joint step of the routed
  loss). LPIPS and the GAN are off (LPIPS needs VGG weights that are not downloaded; the official comparison ran
  without both as well).
* ``stage2``: :class:`PrologueARTrainer`, the B AR (``PrologueARConfig.from_preset("B")``, dropout 0.1, gradient
  clipping 1, an EMA with the official half-life of 2500 steps) on random pretokenized ids of the B tokenizer
  (K = 16, N = 256, 1000 classes; 274 tokens).
* ``post``: :class:`ProloguePostTrainer`, the Post encoder + compact AR of ``post_B.yaml`` over a frozen random B 2D
  tokenizer (K = 0), 256 px images as for stage 1.

``--size tiny`` uses the ``prologue_hf.testing`` models (32 px / 16 px images): the test suite runs it.

Per cell: the median over timed steps of the step's wall time (from one ``on_step_end`` to the next) and its split
into ``data`` (``get_batch_samples``: the DataLoader and collator), ``forward`` (``compute_loss``), ``backward``
(``accelerator.backward``), ``optimizer`` (gradient clipping, every optimizer's ``step``) and ``overhead`` (the
rest: EMA update, LR schedules, ``zero_grad``, callbacks, the Trainer's own bookkeeping). Stage 1 in the official
mode runs its own two steps instead of ``compute_loss`` / ``backward``: there ``forward`` is the encoder + decoder
step and ``backward`` the AR step (each its forward and backward), ``optimizer`` the optimizers' steps; images/s (stage 2:
sequences/s) at the median step; peak memory (CPU: the process's peak resident set, ``VmHWM``; CUDA:
``torch.cuda.max_memory_allocated``); the process's CPU seconds per step (user + system, all its threads: with one
torch thread, what the step costs whatever else shares the cores). On CUDA every timed region is synchronised.
Example::

    OMP_NUM_THREADS=2 python benchmarks/bench_training.py --size B --trainers stage1 stage2 post \\
        --dtypes fp32 bf16 --compile off on --steps 3 --warmup 2 --threads 2 --json training.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"
TRAINERS = ("stage1", "stage2", "post")
DEFAULT_BATCH = {"stage1": 2, "stage2": 4, "post": 2}  # the "small batch" of issue 19's comparison
PARTS = ("data", "forward", "backward", "optimizer", "overhead")


# ============================================================================================ builders
def _yaml_fields(name: str, dataclass_type) -> dict:
    """The entries of ``examples/configs/<name>`` that are fields of ``dataclass_type`` (configs as the source)."""
    import dataclasses

    import yaml

    values = yaml.safe_load((CONFIGS / name).read_text())
    fields = {f.name for f in dataclasses.fields(dataclass_type)}
    return {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in values.items() if k in fields}


def _image_folder(root: str, count: int, size: int) -> str:
    """``count`` random RGB PNGs of ``size + 16`` px in two class folders (the collator crops them to ``size``)."""
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = os.path.join(root, f"class{i % 2}")
        os.makedirs(folder, exist_ok=True)
        pixels = rng.integers(0, 256, (size + 16, size + 16, 3), dtype=np.uint8)
        PIL.Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))
    return root


def _image_data(workdir: str, count: int, size: int):
    from prologue_hf.training.image_data import ImageDataArguments, load_training_images

    folder = _image_folder(os.path.join(workdir, "images"), count, size)
    return load_training_images(ImageDataArguments(train_data=folder, cache_dir=os.path.join(workdir, "hf-cache")))


def _stage1_args(args, workdir: str, yaml_name: str | None, training_mode: str = "routed"):
    from prologue_hf.training.trainer_tokenizer import PrologueTokenizerTrainingArguments

    settings = dict(learning_rate=1e-4, min_learning_rate=3e-5, max_grad_norm=0.0, ema_halflife_steps=1000.0)
    if yaml_name:  # the paper's optimisation settings that change the per-step work
        settings.update({k: v for k, v in _yaml_fields(yaml_name, PrologueTokenizerTrainingArguments).items()
                         if k in settings})  # fmt: skip
    return PrologueTokenizerTrainingArguments(
        **_common_training_args(args, workdir), warmup_steps=1, training_mode=training_mode, **settings
    )


def _common_training_args(args, workdir: str) -> dict:
    import torch

    return dict(
        output_dir=os.path.join(workdir, "out"),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup + args.steps,
        save_strategy="no",
        logging_steps=10**9,  # no logging step inside the run (stage 1 logs diagnostics there)
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=args.dtype == "bf16",
        torch_compile=args.compile == "on",
        **({"torch_compile_backend": args.compile_backend} if args.compile == "on" else {}),
        dataloader_num_workers=0,
        seed=0,
    )


def build_stage1(args, workdir: str):
    from transformers import set_seed

    from prologue_hf.testing import TINY_AR_KWARGS, TINY_TOKENIZER_KWARGS
    from prologue_hf.training.image_data import ImageTrainingCollator, ImageTransform
    from prologue_hf.training.losses import PrologueStage1LossConfig
    from prologue_hf.training.trainer_tokenizer import (
        PrologueStage1ModelArguments,
        PrologueTokenizerTrainer,
        build_stage1_model,
    )

    if args.size == "B":
        model_args = PrologueStage1ModelArguments(**_yaml_fields("tokenizer_B.yaml", PrologueStage1ModelArguments))
        loss = _yaml_fields("tokenizer_B.yaml", PrologueStage1LossConfig)
    else:
        ar = dict(TINY_AR_KWARGS)
        if getattr(args, "stage1_mode", "config") == "official":  # the official AR layout the official mode needs (tokenizer_B.yaml has it)
            ar.update(tie_word_embeddings=False, use_qk_norm=True, rope_axes_dim=[6, 4, 6])
        model_args = PrologueStage1ModelArguments(
            tokenizer_overrides=json.dumps(TINY_TOKENIZER_KWARGS), compact_ar_overrides=json.dumps(ar), num_classes=2
        )
        loss = {}
    loss.update(perceptual_loss="none", perceptual_weight=0.0, gan_weight=0.0, lecam_weight=0.0, r1_weight=0.0)
    set_seed(0)
    model = build_stage1_model(model_args, PrologueStage1LossConfig(**loss))
    size = model.tokenizer.config.image_size
    dataset = _image_data(workdir, args.batch_size * (args.warmup + args.steps), size)
    yaml_name = "tokenizer_B.yaml" if args.size == "B" else None
    mode = stage1_training_mode(getattr(args, "stage1_mode", "config"), yaml_name)
    training = _stage1_args(args, workdir, yaml_name, training_mode=mode)
    collator = ImageTrainingCollator(ImageTransform(size), seed=0)
    trainer_class = PrologueTokenizerTrainer
    if mode == "official":
        from prologue_hf.training.official_trainer import OfficialPrologueTokenizerTrainer

        trainer_class = OfficialPrologueTokenizerTrainer
    return trainer_class(model=model, args=training, train_dataset=dataset, data_collator=collator), size


def stage1_training_mode(requested: str, yaml_name: str | None) -> str:
    """``routed`` / ``official``; ``config``: the recipe's ``training_mode`` (``routed`` without a recipe file)."""
    if requested != "config":
        return requested
    if yaml_name is None:
        return "routed"
    import yaml

    return yaml.safe_load((CONFIGS / yaml_name).read_text()).get("training_mode", "routed")


def build_post(args, workdir: str):
    from transformers import set_seed

    from prologue_hf import PrologueTokenizerConfig, PrologueTokenizerModel
    from prologue_hf.models.visual_tokenizers import PrologueTokenizerAdapter
    from prologue_hf.testing_post import TINY_POST_KWARGS, tiny_visual_tokenizer
    from prologue_hf.training.image_data import ImageTrainingCollator, ImageTransform
    from prologue_hf.training.trainer_post import (
        ProloguePostLossConfig,
        ProloguePostModelArguments,
        ProloguePostTrainer,
        build_post_stage1_model,
    )

    set_seed(0)
    if args.size == "B":  # the paper's frozen tokenizer: its own B 2D tokenizer (stage 1 with K = 0), random here
        frozen = PrologueTokenizerModel(PrologueTokenizerConfig.from_preset("B", num_prologue_tokens=0))
        adapter = PrologueTokenizerAdapter(frozen)
        fields = _yaml_fields("post_B.yaml", ProloguePostModelArguments)
        fields.pop("visual_tokenizer_type", None)
        model_args = ProloguePostModelArguments(visual_tokenizer_name_or_path="in-memory", **fields)
        loss = ProloguePostLossConfig(**_yaml_fields("post_B.yaml", ProloguePostLossConfig))
    else:
        adapter = tiny_visual_tokenizer("prologue")
        model_args = ProloguePostModelArguments(
            visual_tokenizer_name_or_path="in-memory", post_overrides=json.dumps(TINY_POST_KWARGS),
            compact_ar_overrides=json.dumps({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}),
            num_classes=2,
        )
        loss = ProloguePostLossConfig()
    model = build_post_stage1_model(model_args, loss, visual_tokenizer=adapter)
    size = model.post.config.image_size
    dataset = _image_data(workdir, args.batch_size * (args.warmup + args.steps), size)
    training = _stage1_args(args, workdir, "post_B.yaml" if args.size == "B" else None)
    collator = ImageTrainingCollator(ImageTransform(size), seed=0)
    return ProloguePostTrainer(model, training, train_dataset=dataset, data_collator=collator), size


def build_stage2(args, workdir: str):
    import torch

    from prologue_hf import PrologueARConfig, PrologueARForCausalLM
    from prologue_hf.testing import random_pretokenized_dataset, tiny_ar_config
    from prologue_hf.training.pretokenize import PretokenizedInfo
    from prologue_hf.training.trainer_ar import PrologueARTrainer, PrologueARTrainingArguments

    if args.size == "B":
        config = PrologueARConfig.from_preset("B", hidden_dropout=0.1, embedding_dropout=0.1)
    else:
        config = tiny_ar_config(hidden_dropout=0.1, embedding_dropout=0.1)
    vocab = config.vocabulary
    info = PretokenizedInfo(
        tokenizer_identity="sha256:benchmark", tokenizer_config_hash="benchmark",
        visual_vocab_size=vocab.visual_vocab_size, prologue_vocab_size=vocab.prologue_vocab_size,
        num_prologue_tokens=vocab.num_prologue_tokens, num_visual_tokens=vocab.num_visual_tokens,
        image_size=256, num_classes=vocab.num_classes,
    )  # fmt: skip
    rows = args.batch_size * (args.warmup + args.steps)
    dataset = random_pretokenized_dataset(info, rows).with_format("numpy", dtype=None)
    torch.manual_seed(0)
    model = PrologueARForCausalLM(config)
    training = PrologueARTrainingArguments(
        **_common_training_args(args, workdir), learning_rate=2e-4, min_learning_rate=5e-5, warmup_steps=1,
        ema_halflife_steps=2500.0,  # the official stage-2 default (ar_ema_halflife), so both sides keep an EMA
        activation_checkpointing=getattr(args, "activation_checkpointing", False),
    )
    return PrologueARTrainer(model, training, train_dataset=dataset), vocab.sequence_length


BUILDERS = {"stage1": build_stage1, "stage2": build_stage2, "post": build_post}


# ============================================================================================ timing
class StepProfiler:
    """Wall time per optimizer step and its parts, by wrapping the Trainer's methods on one trainer instance.

    ``data``: ``trainer.get_batch_samples``; ``forward``: ``trainer.compute_loss``; ``backward``:
    ``accelerator.backward``; ``optimizer``: ``accelerator.clip_grad_norm_``, the main optimizer's ``step`` and
    ``_discriminator_step`` (stage 1). A step ends at ``on_step_end``; ``overhead`` is its wall time minus the parts.
    """

    def __init__(self, trainer):
        import torch
        from transformers import TrainerCallback

        self.trainer = trainer
        self.cuda = torch.cuda.is_available()
        self.steps: list[dict[str, float]] = []
        self._parts = dict.fromkeys(PARTS[:-1], 0.0)
        self._last_end: float | None = None
        self._last_cpu: float | None = None
        self._open: list[list[float]] = []  # [start, time of wrapped calls inside] of the wrapped calls running now
        self._wrap(trainer, "get_batch_samples", "data")
        self._wrap(trainer, "compute_loss", "forward")
        self._wrap(trainer.accelerator, "backward", "backward")
        self._wrap(trainer.accelerator, "clip_grad_norm_", "optimizer")
        if hasattr(trainer, "_discriminator_step"):
            self._wrap(trainer, "_discriminator_step", "optimizer")
        stepper = getattr(trainer, "stepper", None)
        if stepper is not None:  # the official stage-1 mode: its two steps, their optimizer steps counted apart
            self._wrap(stepper, "encoder_step", "forward")
            self._wrap(stepper, "ar_step", "backward")
            self._wrap(stepper, "_step", "optimizer")
        profiler = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                profiler._wrap(profiler.trainer.optimizer, "step", "optimizer")  # the prepared optimizer
                profiler._last_end, profiler._last_cpu = profiler._now(), time.process_time()

            def on_step_end(self, args, state, control, **kwargs):
                profiler._end_step()

        trainer.add_callback(_Callback())

    def _now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def _wrap(self, owner, name: str, part: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            self._open.append([self._now(), 0.0])
            try:
                return original(*args, **kwargs)
            finally:
                start, inner = self._open.pop()
                elapsed = self._now() - start
                self._parts[part] += elapsed - inner  # a wrapped call inside counts for its own part only
                if self._open:
                    self._open[-1][1] += elapsed

        setattr(owner, name, functools.update_wrapper(timed, original))  # keeps the LR scheduler's step marker

    def _end_step(self) -> None:
        now, cpu = self._now(), time.process_time()
        wall = now - self._last_end
        step = {"wall": wall, **self._parts, "overhead": wall - sum(self._parts.values()), "cpu": cpu - self._last_cpu}
        self.steps.append(step)
        self._parts = dict.fromkeys(PARTS[:-1], 0.0)
        self._last_end, self._last_cpu = now, cpu


def peak_rss_kib() -> int:
    """This process's peak resident set in KiB: ``VmHWM`` of ``/proc/self/status`` (Linux; it starts afresh at
    ``exec``, unlike ``ru_maxrss``, which a child inherits from a large parent), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_cell(args) -> dict:
    """Build one trainer, train ``warmup + steps`` optimizer steps, return the timings of the last ``steps``."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    baseline_kib = peak_rss_kib()
    with tempfile.TemporaryDirectory() as workdir:
        trainer, unit_size = BUILDERS[args.trainer](args, workdir)
        parameters = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        profiler = StepProfiler(trainer)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    timed = profiler.steps[args.warmup :]
    if len(timed) != args.steps:
        raise RuntimeError(f"expected {args.steps} timed steps, got {len(timed)}")
    median = {part: statistics.median(step[part] for step in timed) for part in ("wall",) + PARTS}
    result = {
        "trainer": args.trainer,
        "size": args.size,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "compile": args.compile,
        **({"training_mode": getattr(trainer.args, "training_mode", "routed")} if args.trainer == "stage1" else {}),
        "trained_parameters_m": round(parameters / 1e6, 2),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()} threads",
        "timed_steps": len(timed),
        "s_per_step_median": round(median["wall"], 4),
        "s_per_step_min": round(min(step["wall"] for step in timed), 4),
        "cpu_s_per_step_median": round(statistics.median(step["cpu"] for step in timed), 4),
        **{f"{part}_s_median": round(median[part], 4) for part in PARTS},
        ("sequences_per_s" if args.trainer == "stage2" else "images_per_s"): round(args.batch_size / median["wall"], 3),
        "image_size" if args.trainer != "stage2" else "sequence_length": unit_size,
        "steps": [{k: round(v, 4) for k, v in step.items()} for step in timed],
    }
    peak_kib = peak_rss_kib()
    if torch.cuda.is_available():
        result["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    result["peak_rss_mib"] = round(peak_kib / 1024, 1)
    result["peak_rss_growth_mib"] = round((peak_kib - baseline_kib) / 1024, 1)
    return result


# ============================================================================================ driver
def _cell_command(args, trainer: str, dtype: str, compile_: str) -> list[str]:
    batch = args.batch_size or DEFAULT_BATCH[trainer]
    return [
        sys.executable, os.path.abspath(__file__), "--cell", "--trainer", trainer, "--size", args.size,
        "--batch-size", str(batch), "--dtype", dtype, "--compile-mode", compile_, "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--threads", str(args.threads), "--compile-backend", args.compile_backend,
        "--stage1-mode", args.stage1_mode,
    ] + ["--activation-checkpointing"] * args.activation_checkpointing  # fmt: skip


def markdown_table(results: list[dict]) -> str:
    """One row per cell: medians in seconds per optimizer step, images (sequences) per second, peak memory."""
    lines = [
        "| trainer | size | batch | dtype | compile | s/step | data | forward | backward | optimizer | overhead "
        "| images/s | peak RSS MiB |",
        "| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        rate = r.get("images_per_s", r.get("sequences_per_s"))
        parts = " | ".join(f"{r[f'{p}_s_median']:.3f}" for p in PARTS)
        trainer = r["trainer"] + (" (official)" if r.get("training_mode") == "official" else "")
        lines.append(
            f"| {trainer} | {r['size']} | {r['batch_size']} | {r['dtype']} | {r['compile']} | "
            f"{r['s_per_step_median']:.3f} | {parts} | {rate:.2f} | {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainers", nargs="+", choices=TRAINERS, default=list(TRAINERS))
    parser.add_argument("--size", choices=["tiny", "B"], default="B")
    parser.add_argument("--batch-size", type=int, default=0, help="per step (0: stage1 2, stage2 4, post 2)")
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--compile", nargs="+", choices=["off", "on"], default=["off"], dest="compile_modes",
                        help="torch_compile=False / True (TrainingArguments)")  # fmt: skip
    parser.add_argument("--compile-backend", default="inductor", help="torch_compile_backend of the compiled cells")
    parser.add_argument("--activation-checkpointing", action="store_true", help="stage 2: recompute activations")
    parser.add_argument("--stage1-mode", choices=["config", "routed", "official"], default="config",
                        help="stage 1's training_mode (config: the recipe's, tokenizer_B.yaml at B size)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first (compilation included)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", help="write the results to this file")
    # one cell, in the child process
    parser.add_argument("--cell", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trainer", choices=TRAINERS, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    parser.add_argument("--compile-mode", dest="compile", choices=["off", "on"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.cell:
        print("RESULT " + json.dumps(run_cell(args)), flush=True)
        return []
    results = []
    for trainer in args.trainers:
        for dtype in args.dtypes:
            for compile_ in args.compile_modes:
                command = _cell_command(args, trainer, dtype, compile_)
                out = subprocess.run(command, capture_output=True, text=True)
                if out.returncode != 0:
                    raise RuntimeError(f"{' '.join(command)} failed:\n{out.stderr[-4000:]}")
                line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
                results.append(json.loads(line[len("RESULT ") :]))
                print(json.dumps({k: v for k, v in results[-1].items() if k != "steps"}), flush=True)
    print(markdown_table(results))
    if args.json:
        machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]}
        with open(args.json, "w") as handle:
            json.dump({"machine": machine, "command": sys.argv, "results": results}, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
