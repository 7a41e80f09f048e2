"""Stage 1 of Prologue: :class:`PrologueTokenizerTrainer`, a ``transformers.Trainer`` for the routed loss.

What it adds around :class:`~prologue_hf.training.stage1_model.PrologueStage1Model` (paper appendix E "Stage 1"):

* **Optimizers.** One ``AdamW`` with per-group settings for what the Trainer steps: tokenizer (``betas=(0, 0.99)``,
  no weight decay) and compact AR (``betas=(0.9, 0.99)``, weight decay 0.03 on matrices, none on norms/biases, as the
  official code). The discriminator has its **own** ``AdamW`` (``betas=(0, 0.99)``, weight decay 1e-4, official),
  stepped inside :meth:`training_step` after the last micro-batch of each optimizer step, with its gradients clipped
  separately and cleared before the Trainer clips / steps the main optimizer. One backward pass serves both: the
  generator term sees the discriminator through detached weights, the discriminator term sees detached images.
* **Schedule.** Linear warmup, optional hold at the peak (official ``peak_steps``), then linear decay to
  ``min_learning_rate`` (paper: 1e-4 -> 3e-5 for B, 1e-5 for L), for both optimizers (``transformers.get_wsd_schedule``).
* **EMA** of the tokenizer (half-life ``ema_halflife_steps`` = 1000 steps, official) updated after every step.
* **Checkpoints.** ``tokenizer/`` (EMA weights when EMA is on: what inference and stage 2 load, official
  ``ema_reconstruction``), ``tokenizer_online/`` (raw weights), ``compact_ar/``, ``discriminator/`` (all
  ``save_pretrained`` folders), the discriminator optimizer / scheduler next to the Trainer's optimizer, scheduler,
  RNG and data-position state: resuming continues bit-for-bit. ``resume_from_checkpoint`` takes a folder or
  ``"last"`` / ``"latest"`` / ``"true"`` (the newest complete checkpoint; :mod:`prologue_hf.training.recipe`).
* **Logging** of every loss term, AR statistics, learning rates, and usage / perplexity of both codebooks; PNG grids
  of reconstructions every N steps. A non-finite loss stops training with ``FloatingPointError`` after writing a
  checkpoint of the last good weights (no optimizer step has used the bad loss).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, get_wsd_schedule
from transformers.trainer_utils import SaveStrategy
from transformers.utils import logging

from ..image_grid import image_grid
from ..models.configuration_prologue_tokenizer import PrologueTokenizerConfig
from ..models.discriminator import PrologueDiscriminator, PrologueDiscriminatorConfig
from ..models.modeling_prologue_tokenizer import PrologueTokenizerModel
from .diagnostics import model_prologue_diagnostics
from .ema import ModelEMA
from .launch import check_distributed_launch
from .losses import PrologueStage1LossConfig
from .optimizers import build_adamw
from .recipe import (
    COMPACT_AR_DIR,
    DISCRIMINATOR_DIR,
    RECONSTRUCTIONS_DIR,
    TOKENIZER_DIR,
    TOKENIZER_ONLINE_DIR,
    RecipeTrainerMixin,
    RecipeTrainingArguments,
    build_compact_ar,
    json_overrides,
    seeded_image_collator,
    step_image_path,
    train_save_push,
    write_model_card,
)
from .stage1_model import PrologueStage1Model
from .tau_schedule import ProbSTETemperatureSchedule, temperature_schedule_from_args
from .trackers import log_image_to_trackers

logger = logging.get_logger(__name__)

DISCRIMINATOR_OPTIMIZER_NAME = "discriminator_optimizer.pt"
DISCRIMINATOR_SCHEDULER_NAME = "discriminator_scheduler.pt"
_MAX_ID_BATCHES = 64  # codebook statistics use at most this many recent batches per logging window


# ============================================================================================ arguments
@dataclass
class PrologueTokenizerTrainingArguments(RecipeTrainingArguments):
    """``TrainingArguments`` plus the stage-1 optimizer, schedule, EMA and visualisation settings (and the recipes'
    shared ``overwrite_output_dir`` / ``ignore_tokenizer_identity``: :class:`~prologue_hf.training.recipe.RecipeTrainingArguments`).

    ``learning_rate``, ``warmup_steps``, ``max_grad_norm``, ``bf16``, ``seed``, ``save_steps`` ... keep their
    ``TrainingArguments`` meaning; ``adam_beta1/2`` and ``weight_decay`` are not used (per-group fields below).
    """

    tokenizer_adam_beta1: float = field(default=0.0, metadata={"help": "AdamW beta1 of encoder/decoder (paper: 0)."})
    tokenizer_adam_beta2: float = field(default=0.99, metadata={"help": "AdamW beta2 of encoder/decoder (paper: 0.99)."})
    tokenizer_weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of encoder/decoder (paper: none)."})
    ar_learning_rate: float | None = field(default=None, metadata={"help": "Peak lr of the compact AR (default: learning_rate)."})
    ar_adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1 of the compact AR (paper: 0.9)."})
    ar_adam_beta2: float = field(default=0.99, metadata={"help": "AdamW beta2 of the compact AR (paper: 0.99)."})
    ar_weight_decay: float = field(default=0.03, metadata={"help": "Weight decay of the compact AR's matrices (paper: 0.03)."})
    discriminator_learning_rate: float | None = field(default=None, metadata={"help": "Peak lr of the discriminator (default: learning_rate)."})
    discriminator_adam_beta1: float = field(default=0.0, metadata={"help": "AdamW beta1 of the discriminator (paper: 0)."})
    discriminator_adam_beta2: float = field(default=0.99, metadata={"help": "AdamW beta2 of the discriminator (paper: 0.99)."})
    discriminator_weight_decay: float = field(default=1e-4, metadata={"help": "Weight decay of the discriminator (official: 1e-4)."})
    min_learning_rate: float = field(default=3e-5, metadata={"help": "Floor of the linear decay for learning_rate (paper: 3e-5 B, 1e-5 L); other groups decay by the same ratio."})
    lr_hold_steps: int = field(default=0, metadata={"help": "Steps at the peak lr between warmup and decay (official peak_steps: 100000)."})
    ema_halflife_steps: float = field(default=1000.0, metadata={"help": "Half-life of the tokenizer EMA in steps (official: 1000); 0 disables the EMA."})
    reconstruction_grid_steps: int = field(default=0, metadata={"help": "Write a PNG grid of reconstructions every N steps (0: never)."})
    reconstruction_grid_images: int = field(default=8, metadata={"help": "Images in each reconstruction grid."})
    training_mode: str = field(default="routed", metadata={"help": "'official': the official parameterisation (gates and norm scales W c + b), update order (encoder+decoder step with the AR frozen, then an AR step on the same ids) and optimizer groups (training/official_trainer.py, docs/training.md); 'routed': one joint step of the routed loss on plain gate/norm vectors."})
    official_cond_dim: int = field(default=32, metadata={"help": "Width of the official conditioning vector c (official cond_emb_dim: 32); training_mode='official' only."})
    official_parametrization_init: str = field(default="official", metadata={"help": "'official': the official init of gates / norm affines / conditions; 'match': keep what the given weights compute (continuing from a trained plain tokenizer); training_mode='official' only."})
    prologue_temperature_schedule: str = field(default="constant", metadata={"help": "Prob-STE tau schedule: 'constant' (the config's prologue_temperature), 'linear', 'cosine' or 'exponential' from prologue_temperature_start to _end over prologue_temperature_steps (docs/training.md)."})
    prologue_temperature_start: float | None = field(default=None, metadata={"help": "tau at step 0 (default: the config's prologue_temperature)."})
    prologue_temperature_end: float | None = field(default=None, metadata={"help": "tau after prologue_temperature_steps (default: the config's prologue_temperature)."})
    prologue_temperature_steps: int = field(default=0, metadata={"help": "Optimizer steps of the tau anneal."})

    def __post_init__(self):
        super().__post_init__()
        if self.min_learning_rate < 0 or self.min_learning_rate > self.learning_rate:
            raise ValueError(f"min_learning_rate must lie in [0, learning_rate={self.learning_rate}], got {self.min_learning_rate}")
        if self.ema_halflife_steps < 0:
            raise ValueError(f"ema_halflife_steps must be >= 0, got {self.ema_halflife_steps}")
        if self.lr_hold_steps < 0 or self.reconstruction_grid_steps < 0 or self.reconstruction_grid_images < 1:
            raise ValueError("lr_hold_steps and reconstruction_grid_steps must be >= 0 and reconstruction_grid_images >= 1")
        if self.training_mode not in ("routed", "official"):
            raise ValueError(f"training_mode must be 'routed' or 'official', got {self.training_mode!r}")
        if self.official_parametrization_init not in ("official", "match"):
            raise ValueError(
                f"official_parametrization_init must be 'official' or 'match', got {self.official_parametrization_init!r}"
            )
        if self.official_cond_dim < 1:
            raise ValueError(f"official_cond_dim must be >= 1, got {self.official_cond_dim}")
        if self.prologue_temperature_schedule != "constant" or self.prologue_temperature_start is not None:
            ProbSTETemperatureSchedule(  # checks the kind and the values now, not at the first step
                self.prologue_temperature_start or 1.0, self.prologue_temperature_end or 1.0,
                self.prologue_temperature_steps, self.prologue_temperature_schedule,
            )
        if self.fp16:
            raise ValueError("fp16 is not supported by the stage-1 trainer (two optimizers, one GradScaler); use bf16 or fp32")


@dataclass
class PrologueStage1ModelArguments:
    """Which models stage 1 builds (paper Table A4 presets plus JSON overrides)."""

    tokenizer_preset: str | None = field(default=None, metadata={"help": "Tokenizer preset 'B' or 'L' (default: PrologueTokenizerConfig defaults + overrides)."})
    tokenizer_overrides: str | None = field(default=None, metadata={"help": "JSON dict of PrologueTokenizerConfig fields."})
    init_tokenizer_from: str | None = field(default=None, metadata={"help": "Start from a pretrained tokenizer folder / repo instead."})
    compact_ar_preset: str | None = field(default="compact", metadata={"help": "AR preset of the compact AR ('compact' = ~40M)."})
    compact_ar_overrides: str | None = field(default=None, metadata={"help": "JSON dict of PrologueARConfig fields."})
    discriminator_overrides: str | None = field(default=None, metadata={"help": "JSON dict of PrologueDiscriminatorConfig fields."})
    num_classes: int = field(default=1000, metadata={"help": "Real classes of the dataset (the null class is added)."})


def build_stage1_model(
    model_args: PrologueStage1ModelArguments, loss_config: PrologueStage1LossConfig
) -> PrologueStage1Model:
    """Build tokenizer, compact AR (unless the AR target is ``"none"``) and discriminator (iff ``gan_weight > 0``).

    Call after ``transformers.set_seed`` for a reproducible initialisation.
    """
    overrides = json_overrides(model_args.tokenizer_overrides, "tokenizer_overrides")
    if model_args.init_tokenizer_from:
        tokenizer = PrologueTokenizerModel.from_pretrained(model_args.init_tokenizer_from, **overrides)
    elif model_args.tokenizer_preset:
        tokenizer = PrologueTokenizerModel(PrologueTokenizerConfig.from_preset(model_args.tokenizer_preset, **overrides))
    else:
        tokenizer = PrologueTokenizerModel(PrologueTokenizerConfig(**overrides))
    compact_ar = None
    if loss_config.resolved_ar_target(tokenizer.config.num_prologue_tokens > 0) != "none":
        compact_ar = build_compact_ar(
            tokenizer.config, model_args.num_classes, model_args.compact_ar_preset, model_args.compact_ar_overrides
        )
    discriminator = None
    if loss_config.gan_weight > 0:
        disc_overrides = json_overrides(model_args.discriminator_overrides, "discriminator_overrides")
        discriminator = PrologueDiscriminator(
            PrologueDiscriminatorConfig(num_channels=tokenizer.config.num_channels, **disc_overrides)
        )
    return PrologueStage1Model(tokenizer.train(), compact_ar, discriminator, loss_config)


# ============================================================================================ save / load
def save_stage1_components(stage1: PrologueStage1Model, output_dir: str, ema: ModelEMA | None = None) -> None:
    """Write ``tokenizer/`` (EMA weights if ``ema``), ``tokenizer_online/`` (if ``ema``), ``compact_ar/`` and
    ``discriminator/`` under ``output_dir``, each a ``save_pretrained`` folder."""
    os.makedirs(output_dir, exist_ok=True)
    if ema is not None:
        ema.model.save_pretrained(os.path.join(output_dir, TOKENIZER_DIR))
        stage1.tokenizer.save_pretrained(os.path.join(output_dir, TOKENIZER_ONLINE_DIR))
    else:
        stage1.tokenizer.save_pretrained(os.path.join(output_dir, TOKENIZER_DIR))
    if stage1.compact_ar is not None:
        stage1.compact_ar.save_pretrained(os.path.join(output_dir, COMPACT_AR_DIR))
    if stage1.discriminator is not None:
        stage1.discriminator.save_pretrained(os.path.join(output_dir, DISCRIMINATOR_DIR))


def _load_into(module: nn.Module, directory: str) -> None:
    if not os.path.isdir(directory):
        raise ValueError(f"checkpoint folder {directory} is missing")
    loaded = type(module).from_pretrained(directory)  # resolves tied weights like any HF load
    module.load_state_dict(loaded.state_dict(), strict=True)


def load_stage1_components(stage1: PrologueStage1Model, checkpoint_dir: str, ema: ModelEMA | None = None) -> None:
    """Inverse of :func:`save_stage1_components`: load every part back into existing modules (strict)."""
    online_dir = os.path.join(checkpoint_dir, TOKENIZER_ONLINE_DIR)
    has_online = os.path.isdir(online_dir)
    _load_into(stage1.tokenizer, online_dir if has_online else os.path.join(checkpoint_dir, TOKENIZER_DIR))
    if ema is not None:
        if not has_online:
            logger.warning(f"{checkpoint_dir} has no EMA weights; the EMA restarts from the online tokenizer")
        _load_into(ema.model, os.path.join(checkpoint_dir, TOKENIZER_DIR))
    if stage1.compact_ar is not None:
        _load_into(stage1.compact_ar, os.path.join(checkpoint_dir, COMPACT_AR_DIR))
    if stage1.discriminator is not None:
        _load_into(stage1.discriminator, os.path.join(checkpoint_dir, DISCRIMINATOR_DIR))


# ============================================================================================ callbacks
class _StepEndCallback(TrainerCallback):
    """Epoch number to the collator's augmentation seeds; EMA update after every optimizer step; reconstruction
    grids every N steps."""

    def __init__(self, trainer: PrologueTokenizerTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        collator = self.trainer.data_collator
        if hasattr(collator, "set_epoch"):  # before the epoch's DataLoader iterator (and its workers) is created
            collator.set_epoch(int(state.epoch or 0))
        return control

    def on_step_begin(self, args, state, control, **kwargs):
        quantizer = getattr(self.trainer.stage1_model.tokenizer, "prologue_quantizer", None)
        schedule = self.trainer.temperature_schedule
        if quantizer is not None and schedule is not None:  # a function of the step, so a resume continues it
            quantizer.temperature = schedule(state.global_step)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer.ema is not None:
            trainer.ema.update(trainer.stage1_model.tokenizer)
        every = args.reconstruction_grid_steps
        if every and state.global_step % every == 0 and state.is_world_process_zero:
            trainer.save_reconstruction_grid()
        return control


# ============================================================================================ trainer
class PrologueTokenizerTrainer(RecipeTrainerMixin, Trainer):
    """``transformers.Trainer`` for stage 1 (see the module docstring for the optimizers, schedule and checkpoints).

    Args:
        model: a :class:`PrologueStage1Model` (e.g. from :func:`build_stage1_model`).
        args: :class:`PrologueTokenizerTrainingArguments`.
        train_dataset: a dataset yielding what ``data_collator`` expects, typically
            ``prepare_image_dataset(load_image_dataset(...))`` with :class:`ImageTrainingCollator`.
        data_collator: returns ``{"pixel_values": [B, 3, H, W], "labels": [B]}``.
        **kwargs: other ``Trainer`` arguments (``callbacks``, ...).
    """

    # compute_loss returns a per-batch mean, not a sum over num_items_in_batch: the Trainer divides by the number of
    # gradient-accumulation steps itself.
    loss_is_scaled_for_ga = False
    # the Prologue-Post trainers set this: a subclass learns whether it may train a ProloguePostStage1Model without
    # importing the Post module (which imports this one)
    trains_post_models = False

    def __init__(self, model: PrologueStage1Model, args: PrologueTokenizerTrainingArguments, **kwargs):
        if not isinstance(model, PrologueStage1Model):
            raise ValueError(f"model must be a PrologueStage1Model, got {type(model).__name__}")
        if not isinstance(args, PrologueTokenizerTrainingArguments):
            raise ValueError(f"args must be PrologueTokenizerTrainingArguments, got {type(args).__name__}")
        if args.load_best_model_at_end:
            raise ValueError("load_best_model_at_end is not supported by the stage-1 trainer")
        if kwargs.get("optimizers", (None, None)) != (None, None):
            raise ValueError("the stage-1 trainer builds its own optimizers; do not pass optimizers=")
        check_distributed_launch(args)
        # the collator reads the raw `image`/`label` columns; the Trainer must not drop them
        args.remove_unused_columns = False
        super().__init__(model=model, args=args, **kwargs)
        self.ema = ModelEMA(model.tokenizer, args.ema_halflife_steps) if args.ema_halflife_steps > 0 else None
        self.discriminator_optimizer: torch.optim.Optimizer | None = None
        self.discriminator_lr_scheduler = None
        self._metric_sums: dict[str, tuple[torch.Tensor, int]] = {}
        self._metric_count = 0
        self._id_window: dict[str, list[torch.Tensor]] = {"visual": [], "prologue": []}
        self._grid_images: torch.Tensor | None = None
        self._diagnostic_batch: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.temperature_schedule = temperature_schedule_from_args(args, model.tokenizer)
        self.add_callback(_StepEndCallback(self))

    @property
    def stage1_model(self) -> PrologueStage1Model:
        """The unwrapped :class:`PrologueStage1Model`."""
        return self.model

    def checkpoint_weight_dirs(self) -> tuple[str, ...]:
        """The folders :func:`save_stage1_components` writes (a checkpoint lacking one is incomplete)."""
        stage1 = self.stage1_model
        return tuple(
            name
            for name, present in (
                (TOKENIZER_DIR, True),
                (TOKENIZER_ONLINE_DIR, self.ema is not None),
                (COMPACT_AR_DIR, stage1.compact_ar is not None),
                (DISCRIMINATOR_DIR, stage1.discriminator is not None),
            )
            if present
        )

    # -------------------------------------------------------------------------------------------- optimizers
    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """AdamW with a tokenizer group and two compact-AR groups; a separate AdamW for the discriminator (both fused
        where torch has the kernel: :func:`~prologue_hf.training.optimizers.build_adamw`)."""
        args, stage1 = self.args, self.stage1_model
        if self.optimizer is None:
            groups = [
                {
                    "name": "tokenizer",
                    "params": [p for p in stage1.tokenizer.parameters() if p.requires_grad],
                    "betas": (args.tokenizer_adam_beta1, args.tokenizer_adam_beta2),
                    "weight_decay": args.tokenizer_weight_decay,
                    "lr": args.learning_rate,
                }
            ]
            if stage1.compact_ar is not None:
                decay, no_decay = [], []
                for name, p in stage1.compact_ar.named_parameters():
                    if not p.requires_grad:
                        continue
                    # official: no decay on vectors (norms, biases) and on anything named norm/bias
                    (no_decay if p.ndim < 2 or "norm" in name or "bias" in name else decay).append(p)
                ar_lr = args.ar_learning_rate if args.ar_learning_rate is not None else args.learning_rate
                betas = (args.ar_adam_beta1, args.ar_adam_beta2)
                groups += [
                    {"name": "compact_ar", "params": decay, "betas": betas, "weight_decay": args.ar_weight_decay, "lr": ar_lr},
                    {"name": "compact_ar_no_decay", "params": no_decay, "betas": betas, "weight_decay": 0.0, "lr": ar_lr},
                ]
            self.optimizer = build_adamw([g for g in groups if g["params"]], lr=args.learning_rate, eps=args.adam_epsilon)
        if stage1.discriminator is not None and self.discriminator_optimizer is None:
            lr = args.discriminator_learning_rate if args.discriminator_learning_rate is not None else args.learning_rate
            self.discriminator_optimizer = build_adamw(
                stage1.discriminator.parameters(),
                lr=lr,
                betas=(args.discriminator_adam_beta1, args.discriminator_adam_beta2),
                weight_decay=args.discriminator_weight_decay,
                eps=args.adam_epsilon,
            )
        return self.optimizer

    def _schedule(self, optimizer: torch.optim.Optimizer, num_training_steps: int):
        warmup = min(self.args.get_warmup_steps(num_training_steps), num_training_steps)
        hold = min(self.args.lr_hold_steps, num_training_steps - warmup)
        ratio = self.args.min_learning_rate / self.args.learning_rate if self.args.learning_rate > 0 else 0.0
        return get_wsd_schedule(
            optimizer,
            num_warmup_steps=warmup,
            num_decay_steps=num_training_steps - warmup - hold,
            num_stable_steps=hold,
            decay_type="linear",
            min_lr_ratio=ratio,
        )

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """Warmup, hold, linear decay to ``min_learning_rate`` (same shape for the discriminator)."""
        if self.lr_scheduler is None:
            self.lr_scheduler = self._schedule(optimizer or self.optimizer, num_training_steps)
            self._created_lr_scheduler = True
        if self.discriminator_optimizer is not None:
            self.discriminator_lr_scheduler = self._schedule(self.discriminator_optimizer, num_training_steps)
        return self.lr_scheduler

    # -------------------------------------------------------------------------------------------- steps
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Run :class:`PrologueStage1Model` on ``inputs`` (``pixel_values``, ``labels``) and return its total loss."""
        # The forward updates buffers (BatchNorm statistics, LeCam EMAs): keep a copy so that a non-finite batch
        # cannot leak into the "last good" checkpoint.
        buffers = list(self.stage1_model.buffers())
        snapshot = [b.detach().clone() for b in buffers]
        outputs = model(pixel_values=inputs["pixel_values"], labels=inputs.get("labels"), global_step=self.state.global_step)
        loss = outputs.loss
        self._stop_if_not_finite(loss, outputs.metrics, buffers, snapshot)
        if model.training:
            self._record(outputs, inputs["pixel_values"], inputs.get("labels"))
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model: nn.Module, inputs, num_items_in_batch=None) -> torch.Tensor:
        """The Trainer's forward/backward, then (on the last micro-batch of a step) the discriminator's update."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:
            self._discriminator_step()
        return loss

    def _discriminator_step(self) -> None:
        disc = self.stage1_model.discriminator
        if disc is None:
            return
        if self.state.global_step >= self.stage1_model.loss_config.gan_start_step:
            if self.args.max_grad_norm and self.args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(disc.parameters(), self.args.max_grad_norm)
            self.discriminator_optimizer.step()
        self.discriminator_lr_scheduler.step()
        # cleared now, so the Trainer's clip / step of the main optimizer never sees discriminator gradients
        self.discriminator_optimizer.zero_grad(set_to_none=True)

    def _stop_if_not_finite(self, loss: torch.Tensor, metrics: dict, buffers: list, snapshot: list) -> None:
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")  # every rank stops together
        if float(bad) == 0:
            return
        with torch.no_grad():
            for buffer, saved in zip(buffers, snapshot, strict=True):
                buffer.copy_(saved)
        step = self.state.global_step
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items()))
        saved = "no checkpoint written (save_strategy='no')"
        if self.args.save_strategy != SaveStrategy.NO:
            path = os.path.join(self._get_output_dir(trial=None), f"checkpoint-{step}")
            if not os.path.isdir(path):
                # Weights and optimizer state are the last good ones: nothing has been updated with this loss.
                self._save_checkpoint(self.model, trial=None)
            saved = f"last good state: {path}"
        raise FloatingPointError(f"non-finite stage-1 loss at step {step} ({terms}); training stopped, {saved}")

    # -------------------------------------------------------------------------------------------- logging
    def _record(self, outputs, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        for name, value in outputs.metrics.items():  # some terms (R1) occur on some steps only: count per term
            total, count = self._metric_sums.get(name, (0.0, 0))
            self._metric_sums[name] = (value.detach().float() + total, count + 1)
        self._metric_count += 1
        for name, ids in (("visual", outputs.visual_ids), ("prologue", outputs.prologue_ids)):
            if ids is not None:
                window = self._id_window[name]
                window.append(ids.detach())
                del window[:-_MAX_ID_BATCHES]
        self._diagnostic_batch = (pixel_values.detach(), None if labels is None else labels.detach())
        if self._grid_images is None and self.args.reconstruction_grid_steps:
            self._grid_images = pixel_values[: self.args.reconstruction_grid_images].detach().float().cpu().clone()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged loss terms, codebook usage / perplexity and per-group learning rates to training logs."""
        if "loss" in logs and self._metric_count:
            names = sorted(self._metric_sums)
            values = torch.stack([self._metric_sums[n][0] / self._metric_sums[n][1] for n in names])
            if self.accelerator.num_processes > 1:
                values = self.accelerator.reduce(values, reduction="mean")
            logs.update({n: round(float(v), 6) for n, v in zip(names, values.tolist())})
            tokenizer = self.stage1_model.tokenizer
            for codebook, window in self._id_window.items():
                if window:  # this process's recent batches
                    stats = tokenizer.codebook_usage(torch.cat(window), codebook)
                    logs[f"{codebook}_codebook_usage"] = round(stats["usage"], 6)
                    logs[f"{codebook}_codebook_perplexity"] = round(stats["perplexity"], 4)
            if self._diagnostic_batch is not None:  # prologue collapse diagnostics of the last batch (issue 15)
                stats, warning = model_prologue_diagnostics(tokenizer, *self._diagnostic_batch)
                logs.update({k: round(v, 6) for k, v in stats.items()})
                if warning:
                    logger.warning("step %d: %s", self.state.global_step, warning)
                self._diagnostic_batch = None
            if self.optimizer is not None:
                for group in self.optimizer.param_groups:
                    logs[f"lr_{group.get('name', 'group')}"] = group["lr"]
            if self.discriminator_optimizer is not None:
                logs["lr_discriminator"] = self.discriminator_optimizer.param_groups[0]["lr"]
            self._metric_sums, self._metric_count = {}, 0
            self._id_window = {"visual": [], "prologue": []}
        super().log(logs, start_time)

    @torch.no_grad()
    def save_reconstruction_grid(self, path: str | None = None) -> str | None:
        """Write a PNG: originals, online reconstructions and (if on) EMA reconstructions, one row each.

        Uses the first training images seen (fixed across the run). Returns the path, or None without images.
        """
        if self._grid_images is None:
            return None
        tokenizer = self.stage1_model.tokenizer
        device = next(tokenizer.parameters()).device
        images = self._grid_images.to(device)
        rows = [images]
        for model in [tokenizer] + ([self.ema.model] if self.ema is not None else []):
            was_training = model.training
            model.eval()
            rows.append(model.decode(model.encode(images).visual_ids).pixel_values.float())
            model.train(was_training)
        tiles = torch.cat([PrologueTokenizerModel.postprocess(r, "uint8").cpu() for r in rows], dim=0)  # [R*n, C, H, W]
        path = path or step_image_path(self.args.output_dir, RECONSTRUCTIONS_DIR, self.state.global_step)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        grid = image_grid(tiles, rows=len(rows), gap=0)
        grid.save(path)
        logger.info(f"reconstruction grid written to {path}")
        log_image_to_trackers(self.callback_handler.callbacks, "reconstructions", grid, self.state.global_step)
        return path

    # -------------------------------------------------------------------------------------------- checkpoints
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        logger.info(f"Saving stage-1 models to {output_dir}")
        save_stage1_components(self.stage1_model, output_dir, self.ema)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        stage1 = self.accelerator.unwrap_model(model) if model is not None else self.stage1_model
        logger.info(f"Loading stage-1 models from {resume_from_checkpoint}")
        load_stage1_components(stage1, resume_from_checkpoint, self.ema)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.discriminator_optimizer is not None and self.args.should_save:
            torch.save(self.discriminator_optimizer.state_dict(), os.path.join(output_dir, DISCRIMINATOR_OPTIMIZER_NAME))
            torch.save(self.discriminator_lr_scheduler.state_dict(), os.path.join(output_dir, DISCRIMINATOR_SCHEDULER_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self.discriminator_optimizer is None:
            return
        opt_path = os.path.join(checkpoint, DISCRIMINATOR_OPTIMIZER_NAME)
        if not os.path.isfile(opt_path):
            raise ValueError(f"{checkpoint} has no {DISCRIMINATOR_OPTIMIZER_NAME}; cannot resume the discriminator exactly")
        self.discriminator_optimizer.load_state_dict(torch.load(opt_path, map_location="cpu", weights_only=True))
        self.discriminator_lr_scheduler.load_state_dict(
            torch.load(os.path.join(checkpoint, DISCRIMINATOR_SCHEDULER_NAME), weights_only=True)
        )

    def model_card(self) -> dict:
        """The :func:`~prologue_hf.training.recipe.write_model_card` arguments of this run's README."""
        stage1 = self.stage1_model
        usage = [
            "from prologue_hf import PrologueTokenizerModel, PrologueARForCausalLM",
            f'tokenizer = PrologueTokenizerModel.from_pretrained("<repo>", subfolder="{TOKENIZER_DIR}")',
        ]
        if stage1.compact_ar is not None:
            usage.append(f'compact_ar = PrologueARForCausalLM.from_pretrained("<repo>", subfolder="{COMPACT_AR_DIR}")')
        return dict(
            title="Prologue stage-1 tokenizer",
            summary="Trained with `prologue_hf.PrologueTokenizerTrainer` (arXiv 2605.06137, stage 1).",
            usage=usage,
            facts=[
                f"`{TOKENIZER_DIR}/`: {'EMA' if self.ema is not None else 'online'} weights; "
                f"AR target: `{stage1.ar_target}`; steps: {self.state.global_step}."
            ],
            tags=["image-tokenizer", "vq"],
        )

    def create_model_card(self, *args, **kwargs) -> None:
        """Write the output folder's README (:meth:`model_card`; the Trainer's default card expects one model)."""
        if self.is_world_process_zero():
            write_model_card(self.args.output_dir, **self.model_card())


def train_tokenizer(
    model_args: PrologueStage1ModelArguments,
    data_args,
    loss_config: PrologueStage1LossConfig,
    training_args: PrologueTokenizerTrainingArguments,
) -> PrologueTokenizerTrainer:
    """Run stage 1 end to end (what ``examples/train_tokenizer.py`` does): load the images, build the models, train
    (resuming when ``training_args.resume_from_checkpoint`` is a folder or ``"last"`` / ``"latest"`` / ``"true"``),
    save, optionally push.

    ``data_args`` is an :class:`~prologue_hf.training.image_data.ImageDataArguments`. Returns the trainer (its
    ``state.log_history`` holds every logged loss term).
    """
    from transformers import set_seed

    from .image_data import load_training_images

    with training_args.main_process_first(desc="loading the dataset"):
        dataset = load_training_images(data_args, seed=training_args.seed)
    set_seed(training_args.seed)
    model = build_stage1_model(model_args, loss_config)
    collator = seeded_image_collator(model.tokenizer.config.image_size, data_args, training_args.data_seed or training_args.seed)
    trainer_class = PrologueTokenizerTrainer
    if training_args.training_mode == "official":
        from .official_trainer import OfficialPrologueTokenizerTrainer  # imports this module

        trainer_class = OfficialPrologueTokenizerTrainer
    trainer = trainer_class(model=model, args=training_args, train_dataset=dataset, data_collator=collator)
    train_save_push(trainer, training_args, commit_message="Prologue stage-1 tokenizer")
    return trainer


__all__ = [
    "train_tokenizer",
    "PrologueTokenizerTrainer",
    "PrologueTokenizerTrainingArguments",
    "PrologueStage1ModelArguments",
    "build_stage1_model",
    "save_stage1_components",
    "load_stage1_components",
]
