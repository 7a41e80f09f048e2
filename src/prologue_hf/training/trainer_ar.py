"""Stage-2 AR training: :class:`PrologueARTrainer`, a ``transformers.Trainer`` over pretokenized ids.

Paper appendix E, "Stage 2 (Standalone AR training)": a full-size AR is trained from scratch on the frozen
tokenizer's ids with next-token cross-entropy over ``[class][prologue x K][EOS][visual x N]`` (the sequence is built by
:meth:`PrologueVocabulary.build_sequence`, the only code that knows the layout), AdamW (beta = (0.9, 0.96)), weight
decay 0.03 (0.05 for L-XL), warmup then linear decay to a floor (2e-4 -> 5e-5 with the B tokenizer, 4e-4 -> 1e-5
with the L tokenizer), gradient clipping 1.0, dropout 0.1 and embedding dropout 0.1, and the class label dropped to
the null class with probability 0.1 for classifier-free guidance.

The loss is the plain mean CE over all ``K + 1 + N`` predicted positions, as the official ``train_ar.py``
(``CE(logits, idx)`` over every position): :func:`~prologue_hf.training.losses.prologue_ar_loss`, the same
cross-entropy as stage 1's compact AR; optional per-segment weights multiply the prologue, EOS and visual terms.
Per-segment top-1 accuracy (the paper's Fig. 4, right) and loss are logged next to the Trainer's ``loss``.

Weight decay: norms, biases and embeddings get none (``decay_embeddings=False``, the default). The official
config has ``embedding_nowd: false``, i.e. it *does* decay the shared token embedding; the LlamaGen / nanoGPT
convention of no decay on embeddings is kept here because the class and null-class rows are looked up rarely
(one position per sequence) and decay would shrink them between uses. Set ``decay_embeddings=True`` for the
official behaviour.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.utils import logging

from ..image_grid import image_grid
from ..models import PrologueARConfig, PrologueARForCausalLM, PrologueTokenizerModel
from ..vocabulary import SEGMENTS, PrologueVocabulary
from .ema import ModelEMA
from .launch import accelerate_requested, check_distributed_launch
from .losses import causal_lm_prologue_ar_loss, prepare_class_labels, prologue_ar_loss
from .pretokenize import PretokenizedInfo
from .recipe import (
    EMA_DIR,
    SAMPLES_DIR,
    RecipeTrainerMixin,
    RecipeTrainingArguments,
    step_image_path,
    write_model_card,
)
from .trackers import log_image_to_trackers

logger = logging.get_logger(__name__)


# --------------------------------------------------------------------------------------------- data
@dataclass
class PrologueARDataCollator:
    """Rows of a pretokenized dataset -> AR batch tensors.

    Each feature has ``visual_ids`` ``[N]``, ``prologue_ids`` ``[K]`` (any integer dtype: int16 on disk) and ``label``
    (``-1`` = unlabelled, mapped to the null class). Returns ``class_labels`` ``[B]``, ``visual_ids`` ``[B, N]`` and
    ``prologue_ids`` ``[B, K]`` (only when K > 0), all ``torch.long``; the id ranges are checked by the vocabulary.

    >>> from prologue_hf.testing import tiny_ar_config
    >>> collate = PrologueARDataCollator(tiny_ar_config().vocabulary)
    >>> batch = collate([{"visual_ids": [0] * 16, "prologue_ids": [1] * 4, "label": -1}])
    >>> batch["class_labels"].tolist(), batch["visual_ids"].shape
    ([10], torch.Size([1, 16]))
    """

    vocabulary: PrologueVocabulary

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("features is empty")
        vocab = self.vocabulary
        labels = torch.as_tensor(np.asarray([int(f["label"]) for f in features], dtype=np.int64))
        labels = prepare_class_labels(labels, len(features), vocab.num_classes, drop_prob=0.0, device="cpu")  # -1: null
        visual = torch.from_numpy(np.stack([np.asarray(f["visual_ids"]) for f in features]).astype(np.int64))
        vocab.check_visual_ids(visual)
        vocab.class_token_ids(labels)  # range check of the labels
        batch = {"class_labels": labels, "visual_ids": visual}
        if vocab.has_prologue:
            prologue = torch.from_numpy(np.stack([np.asarray(f["prologue_ids"]) for f in features]).astype(np.int64))
            vocab.check_prologue_ids(prologue)
            batch["prologue_ids"] = prologue
        return batch


def class_dropout_mask(seed: int, step: int, micro_step: int, global_batch_size: int, prob: float) -> torch.Tensor:
    """Bool ``[global_batch_size]``: which samples of one global micro-batch get the null class (CFG training).

    A pure function of ``(seed, step, micro_step)``, so a resumed run draws the same masks and ``P`` processes that
    each take their slice of the global batch drop exactly the samples one process would (the 2-process run then
    reproduces the 1-process loss curve).

    >>> class_dropout_mask(0, 3, 0, 8, 0.5).tolist() == class_dropout_mask(0, 3, 0, 8, 0.5).tolist()
    True
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must lie in [0, 1], got {prob}")
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, step, micro_step]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    return torch.rand(global_batch_size, generator=generator) < prob


# --------------------------------------------------------------------------------------------- arguments
@dataclass
class PrologueARTrainingArguments(RecipeTrainingArguments):
    """``TrainingArguments`` with the paper's stage-2 defaults and Prologue's own options (and the recipes' shared
    ``overwrite_output_dir`` / ``ignore_tokenizer_identity``: :class:`~prologue_hf.training.recipe.RecipeTrainingArguments`).

    Changed defaults: ``adam_beta2=0.96``, ``weight_decay=0.03``, ``max_grad_norm=1.0``,
    ``remove_unused_columns=False`` (the collator reads the pretokenized columns), ``report_to="none"``,
    ``ddp_find_unused_parameters=False``.

    Args:
        class_dropout_prob: probability of replacing a label by the null class (paper: 0.1).
        prologue_loss_weight, eos_loss_weight, visual_loss_weight: per-segment CE multipliers (1 = official).
        min_learning_rate: floor of the linear decay (paper: 5e-5 / 1e-5). With ``lr_scheduler_type="linear"`` it
            switches to transformers' polynomial schedule with ``power=1`` and ``lr_end=min_learning_rate``: linear
            warmup from 0, then linear decay from ``learning_rate`` to the floor.
        decay_embeddings: apply weight decay to the token embedding too (official ``embedding_nowd: false``).
        ema_halflife_steps: keep an EMA (:class:`~prologue_hf.training.ema.ModelEMA`) of the weights with this
            half-life in optimizer steps (official ``ar_ema_halflife: 2500``); ``None`` = no EMA. Saved as ``ema/``
            in each checkpoint. Not with FSDP or DeepSpeed (sharded parameters).
        sample_steps: write a sample grid every this many steps (needs an image tokenizer; 0 = never).
        fused_head_loss: compute the training loss with
            :func:`~prologue_hf.training.losses.prologue_ar_loss_from_hidden` (the LM head fused into the
            cross-entropy, on the predicting positions only: no ``[B, T, vocab]`` logits are kept; same loss and
            gradients within float rounding) whenever the model reaches ``compute_loss`` unwrapped; wrapped models
            (DDP, ``torch.compile``) and calls that return outputs take the plain ``model(...).logits`` path.
        loss_over_class_ids: run the cross-entropy's softmax over the whole vocabulary, class and null-class ids
            included (``LlamaForCausalLM``'s own ``labels`` loss). ``False`` (default): over the visual, prologue and
            EOS ids only (the first ``vocabulary.class_offset`` head rows), as the official ``train_ar.py``, whose
            head has no class rows (the class enters through its own embedding). A class id is never a target
            after position 0 and sampling never draws one, so only the softmax's normaliser differs.
    """

    adam_beta2: float = field(default=0.96, metadata={"help": "AdamW beta2 (paper stage 2: 0.96)."})
    weight_decay: float = field(default=0.03, metadata={"help": "AdamW weight decay (paper: 0.03; L-XL 0.05)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (paper: 1.0)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the pretokenized columns."})
    report_to: str | list[str] = field(default="none", metadata={"help": "Trackers (tensorboard, wandb, ...)."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every AR parameter is used in each forward: no unused-parameter search."}
    )
    class_dropout_prob: float = field(default=0.1, metadata={"help": "Label -> null class probability (CFG)."})
    prologue_loss_weight: float = field(default=1.0, metadata={"help": "CE multiplier of the prologue tokens."})
    eos_loss_weight: float = field(default=1.0, metadata={"help": "CE multiplier of the EOS token."})
    visual_loss_weight: float = field(default=1.0, metadata={"help": "CE multiplier of the visual tokens."})
    min_learning_rate: float | None = field(default=None, metadata={"help": "Floor of the linear LR decay."})
    decay_embeddings: bool = field(default=False, metadata={"help": "Weight-decay the token embedding too."})
    ema_halflife_steps: float | None = field(default=None, metadata={"help": "EMA half-life in steps (None: off)."})
    sample_steps: int = field(default=0, metadata={"help": "Sample-grid period in steps (0: off)."})
    fused_head_loss: bool = field(
        default=True,
        metadata={
            "help": "Training loss with the LM head fused into the cross-entropy (no [B, T, vocab] logits; same "
            "values and gradients as the plain path). Used when the model is not wrapped (DDP, torch.compile)."
        },
    )
    loss_over_class_ids: bool = field(
        default=False,
        metadata={
            "help": "Cross-entropy over the whole vocabulary, class ids included (LlamaForCausalLM's labels loss). "
            "Default: over the visual, prologue and EOS ids only, as the official train_ar.py (its head has no "
            "class rows)."
        },
    )

    def __post_init__(self):
        if not 0.0 <= self.class_dropout_prob <= 1.0:
            raise ValueError(f"class_dropout_prob must lie in [0, 1], got {self.class_dropout_prob}")
        for name in ("prologue_loss_weight", "eos_loss_weight", "visual_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.ema_halflife_steps is not None and not self.ema_halflife_steps > 0:
            raise ValueError(f"ema_halflife_steps must be > 0 or None, got {self.ema_halflife_steps}")
        if self.sample_steps < 0:
            raise ValueError(f"sample_steps must be >= 0, got {self.sample_steps}")
        if self.min_learning_rate is not None:
            if not 0 <= self.min_learning_rate < self.learning_rate:
                raise ValueError(
                    f"min_learning_rate must lie in [0, learning_rate={self.learning_rate}), got {self.min_learning_rate}"
                )
            if str(getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)) not in ("linear", "polynomial"):
                raise ValueError(
                    f"min_learning_rate applies to the linear schedule; got lr_scheduler_type={self.lr_scheduler_type}"
                )
            self.lr_scheduler_type = "polynomial"
            self.lr_scheduler_kwargs = {"lr_end": self.min_learning_rate, "power": 1.0}
        super().__post_init__()

    @property
    def segment_weights(self) -> tuple[float, float, float]:
        return (self.prologue_loss_weight, self.eos_loss_weight, self.visual_loss_weight)


# --------------------------------------------------------------------------------------------- EMA
class _EMAUpdateCallback(TrainerCallback):
    def __init__(self, trainer: PrologueARTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.trainer.ema.update(model)


# --------------------------------------------------------------------------------------------- trainer
class PrologueARTrainer(RecipeTrainerMixin, Trainer):
    """``Trainer`` for stage 2: class-dropout CFG training with the routed segment statistics.

    Args:
        model: a :class:`~prologue_hf.PrologueARForCausalLM` (its config's vocabulary defines the sequence).
        args: :class:`PrologueARTrainingArguments`.
        train_dataset / eval_dataset: pretokenized datasets (:func:`~prologue_hf.training.pretokenize.load_pretokenized_dataset`);
            when they carry :class:`PretokenizedInfo` the AR config is checked against it (vocabulary, classes,
            tokenizer identity) and a config without ``tokenizer_identity`` records the dataset's.
        image_tokenizer: optional tokenizer, checked to be the one that produced the ids (used for sample grids).
        **kwargs: passed to ``transformers.Trainer`` (``callbacks``, ...).

    ``train(resume_from_checkpoint=...)`` takes a checkpoint folder or ``"last"`` / ``"latest"`` / ``"true"`` / ``True``
    (the newest complete checkpoint of ``output_dir``; :func:`~prologue_hf.training.recipe.resolve_resume_checkpoint`).

    >>> trainer = PrologueARTrainer(model, PrologueARTrainingArguments("out"), train_dataset=ids)  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    """

    # compute_loss returns a per-micro-batch mean; the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: PrologueARForCausalLM,
        args: PrologueARTrainingArguments,
        train_dataset=None,
        eval_dataset=None,
        image_tokenizer: PrologueTokenizerModel | None = None,
        data_collator=None,
        **kwargs,
    ):
        if not isinstance(args, PrologueARTrainingArguments):
            raise ValueError(f"args must be PrologueARTrainingArguments, got {type(args).__name__}")
        check_distributed_launch(args)
        if not isinstance(getattr(model, "config", None), PrologueARConfig):
            raise ValueError(f"model must be a PrologueARForCausalLM, got {type(model).__name__}")
        for dataset in (train_dataset, *(eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset])):
            info = PretokenizedInfo.from_dataset(dataset) if dataset is not None else None
            if info is not None:
                info.check_ar_config(model.config)
                if image_tokenizer is not None:
                    info.check_tokenizer(image_tokenizer)
                if model.config.tokenizer_identity is None:
                    model.config.tokenizer_identity = info.tokenizer_identity
        sharded = args.fsdp or args.deepspeed or accelerate_requested("FSDP") or accelerate_requested("DEEPSPEED")
        if args.ema_halflife_steps is not None and sharded:
            raise ValueError(
                "ema_halflife_steps is not supported with FSDP / DeepSpeed (sharded parameters); train without EMA "
                "(the official AR samples from the online weights, ema_sampling: False)"
            )
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=data_collator or PrologueARDataCollator(model.config.vocabulary),
            **kwargs,
        )
        self.vocabulary = model.config.vocabulary
        self.image_tokenizer = image_tokenizer
        self.ema = ModelEMA(model, args.ema_halflife_steps) if args.ema_halflife_steps is not None else None
        if self.ema is not None:
            self.add_callback(_EMAUpdateCallback(self))
        self._stats = {"train": None, "eval": None}
        self._class_drop = None  # [dropped, total] since the last log
        self._micro = (-1, 0)  # (global step, forward passes at that step): keys the class-dropout draws

    # ------------------------------------------------------------------ optimizer
    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Weights of linear layers only: no decay on norms and biases (Trainer default) nor, unless
        ``decay_embeddings``, on ``nn.Embedding`` weights (see the module docstring)."""
        names = super().get_decay_parameter_names(model)
        if self.args.decay_embeddings:
            return names
        embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        return [n for n, p in model.named_parameters() if n in set(names) and id(p) not in embedding_params]

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The Trainer's scheduler; with ``min_learning_rate`` the warmup must leave steps to decay over."""
        warmup = self.args.get_warmup_steps(num_training_steps)
        if self.args.min_learning_rate is not None and warmup >= num_training_steps:
            raise ValueError(
                f"warmup_steps ({warmup}) must be smaller than the number of training steps ({num_training_steps}) "
                "for the linear decay to min_learning_rate"
            )
        return super().create_scheduler(num_training_steps, optimizer)

    # ------------------------------------------------------------------ loss
    def _class_dropout(self, class_labels: torch.Tensor) -> torch.Tensor:
        """Replace labels by the null class following :func:`class_dropout_mask` (training forward passes only)."""
        step = self.state.global_step
        micro = self._micro[1] + 1 if self._micro[0] == step else 0
        self._micro = (step, micro)
        local = class_labels.shape[0]
        mask = class_dropout_mask(
            self.args.seed, step, micro, local * self.args.world_size, self.args.class_dropout_prob
        )[self.args.process_index * local : (self.args.process_index + 1) * local].to(class_labels.device)
        counts = torch.stack([mask.sum(), torch.tensor(local, device=mask.device)]).float()
        self._class_drop = counts if self._class_drop is None else self._class_drop + counts
        return torch.where(mask, torch.full_like(class_labels, self.vocabulary.num_classes), class_labels)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Build ``[class][prologue][EOS][visual]`` and return the (segment-weighted) mean next-token CE.

        ``num_items_in_batch`` is not needed: every sequence has the same length, so the per-micro-batch mean is
        exact and the Trainer divides it by the accumulation steps (``loss_is_scaled_for_ga = False``).
        """
        class_labels = inputs["class_labels"]
        if model.training and self.args.class_dropout_prob > 0:
            class_labels = self._class_dropout(class_labels)
        input_ids = self.vocabulary.build_sequence(class_labels, inputs["visual_ids"], inputs.get("prologue_ids"))
        outputs = None
        num_columns = None if self.args.loss_over_class_ids else self.vocabulary.class_offset
        if self.args.fused_head_loss and not return_outputs and isinstance(model, PrologueARForCausalLM):
            # the decoder stack, then head + CE fused: the [B, T, vocab] logits are never stored (same math).
            # accelerate puts mixed precision on the prepared model's forward, which this bypasses: same autocast here
            with self.accelerator.autocast():
                result, _ = causal_lm_prologue_ar_loss(
                    model, input_ids, self.vocabulary, self.args.segment_weights, num_columns=num_columns
                )
        else:
            outputs = model(input_ids=input_ids, use_cache=False)
            logits = outputs.logits if num_columns is None else outputs.logits[..., :num_columns]
            result = prologue_ar_loss(logits, input_ids, self.vocabulary, self.args.segment_weights)
        key = "train" if model.training else "eval"
        stats = result.segment_stats.detach()
        self._stats[key] = stats if self._stats[key] is None else self._stats[key] + stats
        return (result.loss, outputs) if return_outputs else result.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the loss only (no logits are gathered; the segment statistics are logged by :meth:`log`)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ------------------------------------------------------------------ logging
    def _segment_logs(self, key: str, prefix: str) -> dict[str, float]:
        stats = self._stats[key]
        if stats is None:
            stats = torch.zeros(len(SEGMENTS), 3, device=self.args.device)
        stats = self.accelerator.reduce(stats.to(self.args.device), reduction="sum").cpu()  # every process calls log
        self._stats[key] = None
        logs = {}
        for i, name in enumerate(SEGMENTS):
            if stats[i, 2] > 0:
                logs[f"{prefix}loss_{name}"] = float(stats[i, 0] / stats[i, 2])
                logs[f"{prefix}accuracy_{name}"] = float(stats[i, 1] / stats[i, 2])
        if stats[:, 2].sum() > 0:
            logs[f"{prefix}accuracy"] = float(stats[:, 1].sum() / stats[:, 2].sum())
        return logs

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add per-segment loss / top-1 accuracy (and the realised class-dropout rate) to training and eval logs."""
        if "loss" in logs:
            logs.update(self._segment_logs("train", ""))
            if self.args.class_dropout_prob > 0:
                drop = self._class_drop if self._class_drop is not None else torch.zeros(2, device=self.args.device)
                drop = self.accelerator.reduce(drop.to(self.args.device), reduction="sum").cpu()
                self._class_drop = None
                if drop[1] > 0:
                    logs["class_drop_rate"] = float(drop[0] / drop[1])
        elif "eval_loss" in logs:
            logs.update(self._segment_logs("eval", "eval_"))
        super().log(logs, start_time)

    # ------------------------------------------------------------------ EMA checkpointing, resume
    def save_extra_checkpoint_state(self, checkpoint_dir: str) -> None:
        """With EMA on, ``ema/`` (``save_pretrained`` of the EMA model) inside the checkpoint being written; the
        checkpoint only counts once renamed into place after this (:class:`~prologue_hf.training.recipe.RecipeTrainerMixin`)."""
        if self.ema is not None and self.args.should_save:
            self.ema.model.save_pretrained(os.path.join(checkpoint_dir, EMA_DIR))

    def checkpoint_weight_dirs(self) -> tuple[str, ...]:
        """The model's weights, and the ``ema/`` folder when EMA is on."""
        return ("", EMA_DIR) if self.ema is not None else ("",)

    def resume_tokenizer_identities(self, checkpoint: str) -> tuple[str | None, str | None]:
        """The ``tokenizer_identity`` of the checkpoint's AR config and of this run's (from the dataset)."""
        with open(os.path.join(checkpoint, "config.json")) as handle:
            recorded = json.load(handle).get("tokenizer_identity")
        return recorded, self.model.config.tokenizer_identity

    def restore_extra_state(self, checkpoint: str) -> None:
        """With EMA on, the EMA weights of ``checkpoint`` are restored before the Trainer resumes."""
        if self.ema is None:
            return
        if not os.path.isdir(os.path.join(checkpoint, EMA_DIR)):
            raise ValueError(f"{checkpoint} has no {EMA_DIR}/ folder: it was not trained with ema_halflife_steps")
        saved = type(self.ema.model).from_pretrained(os.path.join(checkpoint, EMA_DIR))
        self.ema.load_state_dict(saved.state_dict())

    def save_extra_outputs(self, output_dir: str) -> None:
        """The EMA weights, when on, to ``<output_dir>/ema`` (beside the online weights of ``save_model``)."""
        if self.ema is not None:
            self.save_ema_model(os.path.join(output_dir, EMA_DIR))

    def save_ema_model(self, output_dir: str) -> None:
        """``save_pretrained`` of the EMA model (main process only)."""
        if self.ema is None:
            raise ValueError("no EMA: train with ema_halflife_steps set")
        if self.args.should_save:
            self.ema.model.save_pretrained(output_dir)

    def model_card(self) -> dict:
        """The README of a stage-2 run (:func:`~prologue_hf.training.recipe.write_model_card` arguments)."""
        config = self.model.config
        vocab = config.vocabulary
        return dict(
            title="Prologue stage-2 AR",
            summary=(
                f"A class-conditional AR ({config.num_hidden_layers} layers, width {config.hidden_size}, "
                f"{config.num_attention_heads} heads, {config.num_classes} classes) over "
                f"{vocab.num_prologue_tokens} prologue tokens, EOS and {vocab.num_visual_tokens} visual tokens of the "
                f"tokenizer `{config.tokenizer_identity or 'unrecorded'}`, trained with "
                "`prologue_hf.PrologueARTrainer` (arXiv 2605.06137, stage 2)."
            ),
            usage=[
                "from prologue_hf import PrologueARForCausalLM",
                'ar = PrologueARForCausalLM.from_pretrained("<repo>")',
                "# sample with prologue_hf.pipelines.ProloguePipeline(tokenizer=<the tokenizer above>, ar=ar)",
            ],
            facts=[
                f"weights: online{f'; EMA in `{EMA_DIR}/`' if self.ema is not None else ''}; "
                f"steps: {self.state.global_step}."
            ],
            tags=["autoregressive", "image-generation", "class-conditional"],
        )

    def create_model_card(self, *args, **kwargs) -> None:
        """Write the output folder's README (:meth:`model_card`), the card every recipe writes."""
        if self.is_world_process_zero():
            write_model_card(self.args.output_dir, **self.model_card())


# --------------------------------------------------------------------------------------------- samples
class PrologueARSampleGridCallback(TrainerCallback):
    """Every ``every_n_steps`` optimizer steps (and at the end), sample one image per label with
    :func:`~prologue_hf.pipelines.sampling.generate_ids`, decode the visual ids with the tokenizer and save a PNG grid
    ``<output_dir>/samples/step-XXXXXXXX.png``. Every process samples (a sharded model needs all of them); the main
    process writes. A fixed seed makes grids of successive steps comparable.

    Args:
        image_tokenizer: decodes the visual ids (moved to the AR's device on first use).
        class_labels: one grid cell per label.
        every_n_steps: period in optimizer steps.
        sampling: a :class:`~prologue_hf.pipelines.SamplingParams`, a preset name, or ``None`` (plain).
        seed: seed of the sampler's generator.
        output_dir: default ``args.output_dir``.
    """

    def __init__(
        self,
        image_tokenizer: PrologueTokenizerModel,
        class_labels: list[int],
        every_n_steps: int,
        sampling=None,
        seed: int = 0,
        output_dir: str | None = None,
    ):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if not class_labels:
            raise ValueError("class_labels must name at least one class")
        self.image_tokenizer = image_tokenizer.eval()
        self.class_labels = [int(c) for c in class_labels]
        self.every_n_steps = every_n_steps
        self.sampling = sampling
        self.seed = seed
        self.output_dir = output_dir
        self.saved: list[str] = []

    @torch.no_grad()
    def sample_images(self, model: PrologueARForCausalLM) -> list:
        """One PIL image per label (the model is put in eval mode for the call and restored after)."""
        from ..pipelines.sampling import generate_ids

        was_training = model.training
        model.eval()
        try:
            device = model.device
            tokenizer = self.image_tokenizer.to(device)
            generator = torch.Generator(device=device).manual_seed(self.seed)
            labels = torch.tensor(self.class_labels, dtype=torch.long)
            out = generate_ids(model, labels, self.sampling, generator=generator)
            pixels = tokenizer.decode(out.visual_ids.to(device)).pixel_values
        finally:
            model.train(was_training)
        return PrologueTokenizerModel.postprocess(pixels, "pil")

    def save_grid(self, model: PrologueARForCausalLM, path: str, is_main: bool = True):
        """Sample (every process) and write a near-square PNG grid to ``path`` (main process; empty cells white).
        Returns the grid image on the main process, else ``None``."""
        images = self.sample_images(model)
        if is_main:
            rows = math.ceil(len(images) / math.ceil(math.sqrt(len(images))))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            grid = image_grid(images, rows=rows, gap=0)
            grid.save(path)
            self.saved.append(path)
            return grid
        return None

    def _maybe_save(self, args, state, model) -> None:
        path = step_image_path(self.output_dir or args.output_dir, SAMPLES_DIR, state.global_step)
        if path not in self.saved:
            grid = self.save_grid(model, path, state.is_world_process_zero)
            if grid is not None:  # also to the Trainer's trackers (report_to), set by the recipe
                log_image_to_trackers(getattr(self, "tracker_callbacks", []), "samples", grid, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_n_steps == 0:
            self._maybe_save(args, state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._maybe_save(args, state, model)


__all__ = [
    "PrologueARDataCollator",
    "PrologueARTrainingArguments",
    "PrologueARTrainer",
    "PrologueARSampleGridCallback",
    "class_dropout_mask",
]
