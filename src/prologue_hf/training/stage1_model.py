"""The modules stage 1 trains, each behind one ``forward`` that returns its loss (paper section 2, Eq. 2).

* :class:`PrologueStage1Model`: tokenizer + compact AR + discriminator + frozen perceptual network; its forward is the
  routed stage-1 loss of :mod:`prologue_hf.training.losses` (reconstruction, perceptual, GAN, VQ and ``lambda * L_AR``).
* :class:`ProloguePostStage1Model`: Prologue-Post (paper section 2.3): a :class:`~prologue_hf.ProloguePostModel` over a
  frozen visual tokenizer and a compact AR; its forward is ``ar_weight * L_AR`` alone (:class:`ProloguePostLossConfig`).

Both return a :class:`PrologueStage1Output`, so one trainer (:class:`~prologue_hf.training.trainer_tokenizer.
PrologueTokenizerTrainer`) serves both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..models.discriminator import PrologueDiscriminator
from ..models.modeling_prologue_ar import PrologueARForCausalLM
from ..models.modeling_prologue_post import ProloguePostModel
from ..models.modeling_prologue_tokenizer import PrologueTokenizerModel
from ..vocabulary import check_compatible
from .losses import (
    PrologueStage1LossConfig,
    RoutedARLossOutput,
    adaptive_gan_weight,
    build_perceptual_loss,
    discriminator_loss,
    generator_adversarial_loss,
    lecam_regularizer,
    prepare_class_labels,
    routed_ar_loss,
)


# ============================================================================================ stage 1
@dataclass
class PrologueStage1Output(ModelOutput):
    """Output of :class:`PrologueStage1Model`.

    Attributes:
        loss: scalar ``generator_loss + discriminator_loss`` (the one tensor to back-propagate).
        generator_loss: scalar tokenizer + compact-AR objective (Eq. 2 plus the reconstruction/GAN/VQ terms).
        discriminator_loss: scalar discriminator objective (0 without GAN or before ``gan_start_step``).
        reconstruction: ``[B, C, H, W]`` decoded images.
        visual_ids: ``[B, N]``; prologue_ids: ``[B, K]`` or None.
        metrics: detached scalar tensors, one per loss term and AR statistic.
    """

    loss: torch.Tensor | None = None
    generator_loss: torch.Tensor | None = None
    discriminator_loss: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    visual_ids: torch.Tensor | None = None
    prologue_ids: torch.Tensor | None = None
    metrics: dict | None = None


class PrologueStage1Model(nn.Module):
    """Everything stage 1 trains, behind one ``forward`` that returns the routed loss.

    Submodules: ``tokenizer`` (:class:`PrologueTokenizerModel`), ``compact_ar`` (:class:`PrologueARForCausalLM` or
    None), ``discriminator`` (:class:`PrologueDiscriminator` or None), ``perceptual`` (frozen, or None).

    Args:
        tokenizer: the tokenizer to train (``"prologue"``, ``"2d"`` or ``"1d"``).
        compact_ar: the jointly trained AR (required unless the AR target is ``"none"``).
        discriminator: required iff ``loss_config.gan_weight > 0``.
        loss_config: :class:`PrologueStage1LossConfig` (paper defaults).
        perceptual_loss: a module ``(reconstruction, target) -> [B]`` replacing the configured one (pluggable
            backbone); by default built from ``loss_config.perceptual_loss``.

    >>> from prologue_hf.testing import tiny_tokenizer, tiny_ar
    >>> tok = tiny_tokenizer().train()
    >>> model = PrologueStage1Model(tok, tiny_ar(tok.config).train(), None,
    ...     PrologueStage1LossConfig(gan_weight=0.0, perceptual_loss="none"))
    >>> out = model(torch.rand(2, 3, 32, 32) * 2 - 1)
    >>> sorted(k for k in out.metrics if k.startswith("ar_ce"))
    ['ar_ce', 'ar_ce_eos', 'ar_ce_prologue', 'ar_ce_visual']
    """

    def __init__(
        self,
        tokenizer: PrologueTokenizerModel,
        compact_ar: PrologueARForCausalLM | None = None,
        discriminator: PrologueDiscriminator | None = None,
        loss_config: PrologueStage1LossConfig | None = None,
        perceptual_loss: nn.Module | None = None,
    ):
        super().__init__()
        config = loss_config or PrologueStage1LossConfig()
        target = config.resolved_ar_target(tokenizer.config.num_prologue_tokens > 0)
        if target == "none" and compact_ar is not None:
            raise ValueError("compact_ar was given but ar_target is 'none'; pass compact_ar=None for the no-AR baselines")
        if target != "none":
            if compact_ar is None:
                raise ValueError(f"ar_target={target!r} needs a compact_ar")
            check_compatible(tokenizer.config, compact_ar.config)
        if (config.gan_weight > 0) != (discriminator is not None):
            raise ValueError(
                f"discriminator must be given iff gan_weight > 0 (gan_weight={config.gan_weight}, "
                f"discriminator={'given' if discriminator is not None else 'None'})"
            )
        self.loss_config = config
        self.ar_target = target
        self.tokenizer = tokenizer
        self.compact_ar = compact_ar
        self.discriminator = discriminator
        if perceptual_loss is None and config.perceptual_weight > 0:
            perceptual_loss = build_perceptual_loss(config.perceptual_loss, config.perceptual_weights_path)
        if perceptual_loss is not None:
            perceptual_loss.requires_grad_(False).eval()
        self.perceptual = perceptual_loss

    # -------------------------------------------------------------------------------------------- pieces
    def ar_loss(self, encoded, labels: torch.Tensor | None) -> RoutedARLossOutput:
        """The compact AR's routed cross-entropy on the tokenizer output ``encoded`` (:func:`routed_ar_loss` with this
        model's AR target, visual dropout and label drop; ``labels`` ``[B]``, ``-1`` or None = unlabelled)."""
        cfg = self.loss_config
        batch, device = encoded.visual_ids.shape[0], encoded.visual_ids.device
        class_labels = prepare_class_labels(labels, batch, self.compact_ar.vocabulary.num_classes, cfg.ar_label_drop_prob, device)
        return routed_ar_loss(
            self.compact_ar,
            encoded,
            class_labels,
            target=self.ar_target,
            visual_dropout=cfg.visual_dropout,
            prologue_target_gradient=cfg.prologue_target_gradient,
            visual_soft_temperature=cfg.visual_soft_temperature,
        )

    def _frozen_discriminator_logits(self, images: torch.Tensor) -> torch.Tensor:
        """``D(images)`` with detached discriminator weights: the gradient reaches ``images`` only."""
        params = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        return torch.func.functional_call(self.discriminator, params, (images,)).logits

    def _discriminator_terms(self, real: torch.Tensor, fake: torch.Tensor, global_step: int) -> tuple[torch.Tensor, dict]:
        cfg, disc = self.loss_config, self.discriminator
        use_r1 = cfg.r1_weight > 0 and (global_step + 1) % cfg.r1_interval == 0 and torch.is_grad_enabled()
        real = real.detach().requires_grad_(use_r1)
        real_logits = disc(real).logits
        fake_logits = disc(fake.detach()).logits
        loss = discriminator_loss(real_logits, fake_logits, cfg.gan_loss)
        metrics = {
            "discriminator": loss.detach(),
            "d_real_logit": real_logits.detach().float().mean(),
            "d_fake_logit": fake_logits.detach().float().mean(),
        }
        if cfg.lecam_weight > 0:
            if torch.is_grad_enabled():
                disc.update_lecam_ema(real_logits, fake_logits)  # official order: update, then regularise
            lecam = lecam_regularizer(real_logits, fake_logits, disc.lecam_real_ema, disc.lecam_fake_ema)
            loss = loss + cfg.lecam_weight * lecam
            metrics["lecam"] = lecam.detach()
        if use_r1:
            (grad,) = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            loss = loss + 0.5 * cfg.r1_weight * r1
            metrics["r1"] = r1.detach()
        return loss, metrics

    # -------------------------------------------------------------------------------------------- forward
    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, global_step: int = 0
    ) -> PrologueStage1Output:
        """Compute the routed stage-1 loss for ``pixel_values`` ``[B, C, H, W]`` in ``[-1, 1]``.

        Args:
            pixel_values: training images.
            labels: ``[B]`` class labels (``-1`` = unlabelled); only the compact AR's class token reads them.
            global_step: optimizer steps done so far (GAN start, R1 schedule).
        """
        cfg = self.loss_config
        out = self.tokenizer(pixel_values)
        target = pixel_values.float()
        reconstruction = out.reconstruction.float()
        zero = reconstruction.new_zeros(())

        l1 = (reconstruction - target).abs().mean()
        perceptual = self.perceptual(reconstruction, target).float().mean() if self.perceptual is not None else zero
        rec_loss = cfg.l1_weight * l1 + cfg.perceptual_weight * perceptual
        vq_loss = out.quantizer_loss.float()
        generator = rec_loss + cfg.commitment_weight * vq_loss
        metrics = {"l1": l1.detach(), "perceptual": perceptual.detach(), "commitment": vq_loss.detach()}

        disc_loss = zero
        if self.discriminator is not None:
            if global_step >= cfg.gan_start_step:
                gan_g = generator_adversarial_loss(self._frozen_discriminator_logits(reconstruction), cfg.gan_loss)
                weight = reconstruction.new_tensor(cfg.gan_weight)
                if cfg.adaptive_gan_weight and torch.is_grad_enabled():
                    weight = weight * adaptive_gan_weight(rec_loss, gan_g, self.tokenizer.decoder.output_layer.weight)
                generator = generator + weight * gan_g
                d_loss, d_metrics = self._discriminator_terms(pixel_values, reconstruction, global_step)
                disc_loss = cfg.discriminator_weight * d_loss
                metrics.update(gan_generator=gan_g.detach(), gan_weight=weight.detach(), **d_metrics)
            else:
                # The discriminator stays in the graph with an exactly-zero gradient, so multi-process DDP sees all
                # parameters used before the GAN starts (the trainer does not step it then).
                disc_loss = sum(p.sum() for p in self.discriminator.parameters()) * 0.0

        if self.ar_target != "none":
            ar = self.ar_loss(out, labels)
            generator = generator + cfg.ar_weight * ar.loss
            metrics["ar_ce"] = ar.loss.detach()
            metrics.update(ar.metrics)

        metrics["generator_loss"] = generator.detach()
        return PrologueStage1Output(
            loss=generator + disc_loss,
            generator_loss=generator,
            discriminator_loss=disc_loss,
            reconstruction=out.reconstruction,
            visual_ids=out.visual_ids,
            prologue_ids=out.prologue_ids,
            metrics=metrics,
        )


# ============================================================================================ Prologue-Post
@dataclass
class ProloguePostLossConfig:
    """The only loss of Prologue-Post: ``ar_weight * L_AR`` (paper section 2.3)."""

    ar_weight: float = field(
        default=3.0,
        metadata={"help": "lambda on L_AR (paper: 3). With Adam it only matters through gradient clipping."},
    )
    visual_dropout: float = field(default=0.5, metadata={"help": "Per-sample probability that all visual AR inputs become EOS (paper: 0.5)."})
    ar_label_drop_prob: float = field(
        default=1.0,
        metadata={"help": "Probability that the compact AR sees the null class instead of the label (official stage 1: 1.0)."},
    )
    prologue_target_gradient: bool = field(
        default=False, metadata={"help": "Also back-propagate log p(z_p) through the prologue targets (official: off)."}
    )

    def __post_init__(self):
        if self.ar_weight <= 0:
            raise ValueError(f"ar_weight must be > 0 (L_AR is the only training signal), got {self.ar_weight}")

    def to_stage1(self) -> PrologueStage1LossConfig:
        """The stage-1 loss config with every reconstruction-side term switched off (validates the AR fields)."""
        return PrologueStage1LossConfig(
            l1_weight=0.0,
            perceptual_weight=0.0,
            perceptual_loss="none",
            gan_weight=0.0,
            commitment_weight=0.0,
            ar_weight=self.ar_weight,
            ar_target="prologue",
            visual_dropout=self.visual_dropout,
            ar_label_drop_prob=self.ar_label_drop_prob,
            prologue_target_gradient=self.prologue_target_gradient,
        )


class ProloguePostStage1Model(PrologueStage1Model):
    """The stage-1 module of Prologue-Post: ``tokenizer`` is a :class:`ProloguePostModel`, ``compact_ar`` the AR,
    no discriminator and no perceptual network; ``forward`` returns ``ar_weight * L_AR`` only.

    >>> from prologue_hf.testing_post import tiny_post_model
    >>> from prologue_hf.testing import tiny_ar
    >>> post = tiny_post_model("janus_vqvae").train()
    >>> model = ProloguePostStage1Model(post, tiny_ar(post.config).train())
    >>> out = model(torch.rand(2, 3, 16, 16) * 2 - 1)
    >>> sorted(out.metrics)[:3]
    ['ar_acc_eos', 'ar_acc_prologue', 'ar_acc_visual']
    """

    def __init__(
        self,
        post: ProloguePostModel,
        compact_ar: PrologueARForCausalLM,
        loss_config: ProloguePostLossConfig | None = None,
    ):
        if not isinstance(post, ProloguePostModel):
            raise ValueError(f"post must be a ProloguePostModel, got {type(post).__name__}")
        if not isinstance(compact_ar, PrologueARForCausalLM):
            raise ValueError(f"compact_ar must be a PrologueARForCausalLM, got {type(compact_ar).__name__}")
        config = loss_config or ProloguePostLossConfig()
        # the vocabulary check of PrologueStage1Model names the frozen tokenizer's grid / codebook on a mismatch
        super().__init__(post, compact_ar, None, config.to_stage1())
        self.post_loss_config = config
        # the visual pathway: eval mode, no gradients (the adapter already froze it; asserted again here)
        post.visual_tokenizer.model.eval().requires_grad_(False)

    @property
    def post(self) -> ProloguePostModel:
        return self.tokenizer

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, global_step: int = 0
    ) -> PrologueStage1Output:
        """``pixel_values`` ``[B, C, S, S]`` in ``[-1, 1]``, ``labels`` ``[B]`` (``-1`` = unlabelled) ->
        :class:`PrologueStage1Output` with ``loss = ar_weight * L_AR`` and the AR metrics."""
        encoded = self.tokenizer(pixel_values)  # frozen visual ids + Prob-STE prologue (p~ carries the gradient)
        ar = self.ar_loss(encoded, labels)  # the stage-1 config of to_stage1(): the AR fields of post_loss_config
        loss = self.post_loss_config.ar_weight * ar.loss
        metrics = {"ar_ce": ar.loss.detach(), **ar.metrics, "generator_loss": loss.detach()}
        return PrologueStage1Output(
            loss=loss,
            generator_loss=loss,
            discriminator_loss=loss.new_zeros(()),
            reconstruction=None,
            visual_ids=encoded.visual_ids,
            prologue_ids=encoded.prologue_ids,
            metrics=metrics,
        )


__all__ = [
    "PrologueStage1Model",
    "PrologueStage1Output",
    "ProloguePostLossConfig",
    "ProloguePostStage1Model",
]
