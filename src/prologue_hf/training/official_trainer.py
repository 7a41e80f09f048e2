"""Stage 1 in the official training mode (``training_mode="official"``) under ``transformers.Trainer``.

:class:`OfficialPrologueTokenizerTrainer` is the stage-1 :class:`~prologue_hf.training.trainer_tokenizer.
PrologueTokenizerTrainer` with three changes:

* the tokenizer and the compact AR carry the official gate/norm parameterisation
  (:mod:`~prologue_hf.models.official_parametrization`, conditioning width ``official_cond_dim``), started at the
  official init (``official_parametrization_init="official"``) or so that they compute exactly what the given weights
  computed (``"match"``, for continuing from a trained plain tokenizer);
* each Trainer step is one official iteration (:class:`~prologue_hf.training.official_stage1.OfficialStage1Stepper`):
  an encoder+decoder step with the AR frozen, plus the perceptual and adversarial terms of the loss config, then an AR
  step on the cached ids, then the discriminator step on the cached reconstructions (official ``DO_GAN_D`` phase).
  The AdamW optimizers live in the stepper; the Trainer sees them as one optimizer (:class:`OfficialOptimizers`),
  so its scheduler, logging and checkpoints cover them;
* checkpoints hold the usual ``save_pretrained`` folders, written from folded copies (what inference, stage 2 and
  the pipelines load), plus ``official_parametrization.safetensors`` (the unfolded tensors, for an exact resume).

The same class trains Prologue-Post (a :class:`~prologue_hf.training.stage1_model.ProloguePostStage1Model`; use
:class:`~prologue_hf.training.trainer_post.OfficialProloguePostTrainer`, which adds the Post trainer's checks):
only the prologue encoder + quantizer are parametrized and trained by the encoder step, there is no decoder.

Gradient accumulation (``gradient_accumulation_steps = n``): the encoder steps of the ``n`` micro-batches accumulate
(loss / n), the encoder steps once, then the AR steps of the ``n`` micro-batches accumulate on their cached ids and
the AR steps once: one big batch of ``n`` micro-batches, in the official order (see docs/training.md for what is
not batch-size-linear: the discriminator's BatchNorm, the adaptive GAN weight, the logged entropy monitors).

Not supported (clear errors): tokenizers without prologue tokens, the ``"visual"`` AR target, and ARs without the
official layout (``use_qk_norm``, ``rope_axes_dim``). ``max_grad_norm`` is not applied (the official stage 1 does not
clip; the recipes set it to 0). As in the official loop, an optimizer at lr 0 (the first warmup step) does not step.
Not kept: the official EMA of the compact AR (``ar_ema_halflife``), which the official code only saves (its
sampling during training uses the online AR); nothing trained or saved here depends on it.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file
from transformers.utils import logging

from ..models.official_parametrization import (
    folded_copy,
    init_official_parametrization,
    match_plain_values,
    parametrize_official_ar,
    parametrize_official_post,
    parametrize_official_tokenizer,
)
from .losses import PrologueStage1LossConfig, adaptive_gan_weight, generator_adversarial_loss
from .official_stage1 import OfficialStage1Settings, OfficialStage1Stepper
from .stage1_model import ProloguePostLossConfig, ProloguePostStage1Model, PrologueStage1Model
from .trainer_tokenizer import (
    PrologueTokenizerTrainer,
    PrologueTokenizerTrainingArguments,
    save_stage1_components,
)

logger = logging.get_logger(__name__)

OFFICIAL_STATE_NAME = "official_parametrization.safetensors"
TRAINING_MODES = ("routed", "official")


class OfficialOptimizers(torch.optim.Optimizer):
    """The stepper's optimizers seen as one by the Trainer: ``param_groups`` are theirs (so the lr scheduler sets
    their rates), ``state_dict`` / ``load_state_dict`` cover them all, and ``step`` does nothing because each
    optimizer steps inside the official iteration, at its place in the update order."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = optimizers
        params = [p for opt in optimizers.values() for group in opt.param_groups for p in group["params"]]
        super().__init__(params, {})
        self._share_groups()

    def _share_groups(self) -> None:
        self.param_groups = [group for opt in self.optimizers.values() for group in opt.param_groups]

    def step(self, closure=None):  # the updates happened in OfficialStage1Stepper, in the official order
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state_dict)}, expected {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state_dict[name])
        self._share_groups()  # load_state_dict builds new group dicts


def official_settings(
    args: PrologueTokenizerTrainingArguments, loss_config: PrologueStage1LossConfig | ProloguePostLossConfig
) -> OfficialStage1Settings:
    """The stepper's settings from the stage-1 training arguments and the loss config of stage 1 or Prologue-Post
    (Post has no reconstruction terms: ``l1_weight`` does not apply and ``commitment_weight`` keeps the official 1,
    which only scales the detached prologue-quantizer term of the logged loss)."""
    reconstruction = {}
    if isinstance(loss_config, PrologueStage1LossConfig):
        reconstruction = dict(l1_weight=loss_config.l1_weight, commitment_weight=loss_config.commitment_weight)
    return OfficialStage1Settings(
        lr_encoder=args.learning_rate,
        lr_decoder=args.learning_rate,
        lr_ar=args.ar_learning_rate if args.ar_learning_rate is not None else args.learning_rate,
        betas_autoencoder=(args.tokenizer_adam_beta1, args.tokenizer_adam_beta2),
        betas_ar=(args.ar_adam_beta1, args.ar_adam_beta2),
        adam_eps=args.adam_epsilon,
        weight_decay_encoder=args.tokenizer_weight_decay,
        weight_decay_decoder=args.tokenizer_weight_decay,
        weight_decay_ar=args.ar_weight_decay,
        prior_weight_prologue=loss_config.ar_weight,
        prior_weight_visual=loss_config.ar_weight,
        visual_dropout=loss_config.visual_dropout,
        label_drop_prob=loss_config.ar_label_drop_prob,
        ema_halflife_autoencoder=0.0,  # the Trainer's ModelEMA averages the (parametrized) tokenizer
        ema_halflife_ar=0.0,  # official ar_ema_halflife: an AR EMA the official code only saves; never read in training
        **reconstruction,
    )


class OfficialPrologueTokenizerTrainer(PrologueTokenizerTrainer):
    """Stage 1 with the official parameterisation and update order (see the module docstring).

    Args:
        model: a :class:`PrologueStage1Model` with a Prologue tokenizer and a compact AR in the official layout.
        args: :class:`PrologueTokenizerTrainingArguments` (``training_mode="official"``).
    """

    def __init__(self, model: PrologueStage1Model, args: PrologueTokenizerTrainingArguments, **kwargs):
        if not isinstance(model, PrologueStage1Model):
            raise ValueError(f"model must be a PrologueStage1Model, got {type(model).__name__}")
        post = isinstance(model, ProloguePostStage1Model)
        if post and not self.trains_post_models:
            raise ValueError("a ProloguePostStage1Model trains in the official mode with OfficialProloguePostTrainer")
        cfg = model.loss_config
        if model.compact_ar is None or cfg.resolved_ar_target(model.tokenizer.config.num_prologue_tokens > 0) != "prologue":
            raise NotImplementedError("training_mode='official' needs a Prologue tokenizer (K > 0) and the 'prologue' AR target")
        if cfg.prologue_target_gradient:
            raise ValueError("training_mode='official' uses hard prologue targets: set prologue_target_gradient=false")
        if args.max_grad_norm and args.max_grad_norm > 0:
            logger.warning("training_mode='official' does not clip gradients (official grad_clip_* = 0); max_grad_norm is ignored")
        # clones: parametrizing moves these very tensors into the parametrizations and overwrites them
        plain = {
            "tokenizer": {k: v.clone() for k, v in model.tokenizer.state_dict().items()},
            "ar": {k: v.clone() for k, v in model.compact_ar.state_dict().items()},
        }
        num_labels = model.compact_ar.vocabulary.num_classes + 1
        # the AR first: it is the part whose layout can be refused, and nothing is changed before that check
        ar_map = parametrize_official_ar(model.compact_ar, args.official_cond_dim)
        if post:  # the prologue encoder + quantizer; the frozen visual pathway is not a submodule
            maps = {"enc": parametrize_official_post(model.tokenizer, args.official_cond_dim, num_labels)}
        else:
            maps = dict(zip(("enc", "dec"), parametrize_official_tokenizer(model.tokenizer, args.official_cond_dim, num_labels)))
        maps["ar"] = ar_map
        generator = torch.Generator().manual_seed(args.seed)
        init_official_parametrization(list(maps.values()), generator=generator)
        if args.official_parametrization_init == "match":
            match_plain_values(model.tokenizer, plain["tokenizer"])
            match_plain_values(model.compact_ar, plain["ar"])
        self.official_maps = maps
        settings = official_settings(args, model.post_loss_config if post else cfg)
        self.stepper = OfficialStage1Stepper(model.tokenizer, model.compact_ar, self.official_maps, settings)
        names = {"enc": ["encoder"], "dec": ["decoder"], "ar": ["compact_ar", "compact_ar_no_decay"]}
        for key, optimizer in self.stepper.optimizers.items():
            for group, name in zip(optimizer.param_groups, names[key]):
                group["name"] = name
        super().__init__(model=model, args=args, **kwargs)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The stepper's optimizers as one (:class:`OfficialOptimizers`); the parent adds the discriminator's."""
        if self.optimizer is None:
            self.optimizer = OfficialOptimizers(self.stepper.optimizers)
        return super().create_optimizer(model)  # with self.optimizer set, it builds only the discriminator's AdamW

    # ---------------------------------------------------------------------------------------------- the step
    def _generator_terms(self, out, pixel_values: torch.Tensor, l1: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Perceptual and adversarial terms of the encoder step (official ``ae_loss`` beyond L1, ``gan_G_loss``)."""
        stage1, cfg = self.stage1_model, self.stage1_model.loss_config
        reconstruction, target = out.reconstruction.float(), pixel_values.float()
        extra, metrics = l1.new_zeros(()), {}
        rec_loss = l1
        if stage1.perceptual is not None:
            perceptual = stage1.perceptual(reconstruction, target).float().mean()
            extra = extra + cfg.perceptual_weight * perceptual
            rec_loss = rec_loss + cfg.perceptual_weight * perceptual
            metrics["perceptual"] = perceptual
        if stage1.discriminator is not None and self.state.global_step >= cfg.gan_start_step:
            gan_g = generator_adversarial_loss(stage1._frozen_discriminator_logits(reconstruction), cfg.gan_loss)
            weight = reconstruction.new_tensor(cfg.gan_weight)
            if cfg.adaptive_gan_weight:
                weight = weight * adaptive_gan_weight(rec_loss, gan_g, stage1.tokenizer.decoder.output_layer.weight)
            extra = extra + weight * gan_g
            metrics.update(gan_generator=gan_g, gan_weight=weight)
        return extra, metrics

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """One official iteration on the batch; returns the encoder-step loss (detached, divided by the number of
        accumulated micro-batches as the Trainer expects).

        With ``gradient_accumulation_steps = n`` every micro-batch runs its encoder step's backward (loss / n); the
        last one then steps the encoder, runs the AR step of every micro-batch on its cached ids (loss / n) and steps
        the AR; the discriminator accumulates likewise and steps last."""
        stage1 = self.stage1_model
        stage1.train()
        pixel_values, labels = inputs["pixel_values"], inputs.get("labels")
        scale = 1.0 / self.args.gradient_accumulation_steps
        last = self.accelerator.sync_gradients
        extra = self._generator_terms if stage1.perceptual is not None or stage1.discriminator is not None else None
        try:
            # the stepper calls the modules directly, not the prepared model whose forward accelerate wraps in its
            # mixed-precision autocast (the Trainer's own context is empty): --bf16 needs the autocast here
            with self.compute_loss_context_manager(), self.accelerator.autocast():
                enc = self.stepper.encoder_step(pixel_values, labels, extra_loss=extra, loss_scale=scale, update=last)
                ars = []
                while last and self.stepper.pending_ar_steps:
                    ars.append(self.stepper.ar_step(loss_scale=scale, update=self.stepper.pending_ar_steps == 1))
        except FloatingPointError as error:
            self._stop_if_not_finite(pixel_values.new_tensor(float("nan")), {"error": pixel_values.new_zeros(())}, [], [])
            raise error  # not reached: _stop_if_not_finite raises after saving the last good state
        metrics = {f"enc_{k}": v for k, v in enc.losses.items()}
        if ars:  # one record per optimizer step: the mean over the micro-batches
            metrics.update({f"ar_{k}": torch.stack([a.losses[k] for a in ars]).mean() for k in ars[0].losses})
        if stage1.discriminator is not None and self.state.global_step >= stage1.loss_config.gan_start_step:
            d_loss, d_metrics = stage1._discriminator_terms(pixel_values, enc.tensors["reconstruction"], self.state.global_step)
            (stage1.loss_config.discriminator_weight * scale * d_loss).backward()
            metrics.update({k: v.detach() for k, v in d_metrics.items()})
        if stage1.discriminator is not None and last:
            self._discriminator_step()
        indices = enc.tensors["indices"]
        k = stage1.tokenizer.config.num_prologue_tokens
        outputs = SimpleNamespace(metrics=metrics, prologue_ids=indices[:, :k], visual_ids=indices[:, k:])
        self._record(outputs, pixel_values, labels)
        return enc.losses["loss"].to(pixel_values.device) * scale

    # ---------------------------------------------------------------------------------------------- checkpoints
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        stage1 = self.stage1_model
        tensors = {f"tokenizer.{k}": v for k, v in stage1.tokenizer.state_dict().items()}
        tensors.update({f"compact_ar.{k}": v for k, v in stage1.compact_ar.state_dict().items()})
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.model.state_dict().items()})
        # shared tensors (a tied head, the conditions every parametrization refers to) are stored once each
        unique: dict[str, torch.Tensor] = {}
        seen: set[tuple[int, int]] = set()
        for name, tensor in tensors.items():
            key = (tensor.data_ptr(), tensor.numel())
            unique[name] = tensor.detach().cpu().clone() if key in seen else tensor.detach().cpu().contiguous()
            seen.add(key)
        # written first: a checkpoint whose save_pretrained folders are complete also has this file
        save_file({k: v.clone() for k, v in unique.items()}, os.path.join(output_dir, OFFICIAL_STATE_NAME))
        plain = SimpleNamespace(
            tokenizer=folded_copy(stage1.tokenizer), compact_ar=folded_copy(stage1.compact_ar),
            discriminator=stage1.discriminator,
        )
        ema = SimpleNamespace(model=folded_copy(self.ema.model)) if self.ema is not None else None
        save_stage1_components(plain, output_dir, ema)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        path = os.path.join(resume_from_checkpoint, OFFICIAL_STATE_NAME)
        if not os.path.isfile(path):
            raise ValueError(
                f"{resume_from_checkpoint} has no {OFFICIAL_STATE_NAME}: it was not written in training_mode='official' "
                "(start a new official run from its tokenizer with official_parametrization_init='match')"
            )
        state = load_file(path)
        stage1 = self.stage1_model
        parts = [("tokenizer.", stage1.tokenizer), ("compact_ar.", stage1.compact_ar)]
        if self.ema is not None:
            parts.append(("ema.", self.ema.model))
        for prefix, module in parts:
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
        if stage1.discriminator is not None:
            from .trainer_tokenizer import DISCRIMINATOR_DIR, _load_into

            _load_into(stage1.discriminator, os.path.join(resume_from_checkpoint, DISCRIMINATOR_DIR))


__all__ = ["OFFICIAL_STATE_NAME", "OfficialOptimizers", "OfficialPrologueTokenizerTrainer", "TRAINING_MODES", "official_settings"]
