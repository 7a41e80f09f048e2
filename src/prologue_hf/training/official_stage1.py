"""Stage 1 as the official trainer runs it (``training_mode="official"``): two global steps per batch.

One iteration of the official ``train_tokenizer.py`` loop (phases ``DO_L1-DO_GAN_G-DO_PRIOR_ENC,DO_GAN_D-DO_PRIOR_AR``)
is, on one batch (facts read from the official code; README of ``tests/fixtures/official-prologue-stage1-step``):

1. **Encoder + decoder step**, the AR frozen (``requires_grad=False``, eval mode). Class drop (``torch.rand([B, 1])
   < label_drop_prob`` -> null class), encoder, decoder on the straight-through visual codes, visual dropout
   (``torch.rand(B) < prior_visual_dropout``: the AR *inputs* of the visual positions become EOS), the AR on
   ``[BOS = class, p~ @ W_prologue, EOS, visual]`` (Prob-STE one-hots carry the gradient into the encoder).
   ``loss = l1 + vqloss + lambda_s (CE_prologue + CE_eos) + lambda_v CE_visual`` with each CE part summed over its
   positions, averaged over the batch and divided by the full length ``T``; ``vqloss`` = visual VQ loss (with
   gradient) + ``0.05 *`` visual entropy + prologue quantizer and entropy terms, the last three **detached** but
   added to the logged value. AdamW steps of encoder, then decoder; their EMAs.
2. **AR step**, encoder and decoder frozen: **no encoder forward**; the ids of step 1 (computed before the encoder
   update), the same class labels, a **new** visual-dropout mask, plain id lookups, ``loss = CE`` unweighted. AdamW
   step of the AR (two groups: weight decay for tensors of rank >= 2 whose official name has no ``bias``, ``norm``,
   ``adaln``); its EMA.

Prologue-Post (official ``phases: DO_PRIOR_ENC,DO_PRIOR_AR:1,1`` over a frozen 2D tokenizer) runs the same two
steps without the decoder: step 1 trains the prologue encoder + quantizer alone on ``prior_enc_loss`` (the detached
prologue-quantizer terms added to the logged value), step 2 is unchanged.

No gradient clipping; an optimizer at lr 0 does not step. The models carry the official gate/norm parameterisation
(:mod:`~prologue_hf.models.official_parametrization`); the optimizer groups are built from the official names.
Every random draw can be injected (``label_drop_mask`` / ``visual_drop_mask``), otherwise it is drawn from torch's
global generator in the official order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..models.modeling_prologue_ar import PrologueARForCausalLM
from ..models.modeling_prologue_post import ProloguePostModel
from ..models.modeling_prologue_tokenizer import PrologueTokenizerModel, patchify
from ..models.official_parametrization import OfficialParameterMap
from .losses import causal_lm_prologue_ar_loss
from .optimizers import build_adamw


@dataclass
class OfficialStage1Settings:
    """The official stage-1 hyper-parameters (official config key in brackets; defaults = the released recipe).

    ``prior_weight_prologue`` [``prior_enc_semantic_weight``] multiplies the prologue and EOS CE, ``prior_weight_visual``
    [``prior_enc_visual_weight``] the visual CE, on the encoder side only. ``ema_halflife_*`` are in optimizer steps of
    the module (``rate = 0.5 ** (1 / halflife)``; 0 = no EMA).
    """

    lr_encoder: float = 1e-4  # lr_enc
    lr_decoder: float = 1e-4  # lr_dec
    lr_ar: float = 1e-4  # lr_ar
    betas_autoencoder: tuple[float, float] = (0.0, 0.99)  # beta1, beta2
    betas_ar: tuple[float, float] = (0.9, 0.99)  # ar_beta1, ar_beta2
    adam_eps: float = 1e-8
    weight_decay_encoder: float = 0.0  # weight_decay_enc
    weight_decay_decoder: float = 0.0  # weight_decay_dec
    weight_decay_ar: float = 0.03  # weight_decay_ar
    l1_weight: float = 1.0
    commitment_weight: float = 1.0  # commitment_loss_weight
    entropy_weight: float = 0.05  # entropy_loss_weight
    entropy_temperature: float = 0.01  # compute_entropy_loss's default
    vq_beta: float = 0.25  # Quantizer.vq_beta (the visual VQ loss itself uses the tokenizer's commitment_beta)
    prologue_vq_beta: float = 0.25  # SemanticQuantizer.vq_beta (its detached monitor term only)
    prior_weight_prologue: float = 3.0
    prior_weight_visual: float = 3.0
    visual_dropout: float = 0.5  # prior_visual_dropout
    label_drop_prob: float = 0.1  # the AR's class drop (stage-1 recipes of the release: 1.0, i.e. unconditional)
    ste_ar_embedding: bool = True  # ARModel.ste_ar_embedding
    ema_halflife_autoencoder: float = 1000.0  # ae_ema_halflife
    ema_halflife_ar: float = 2500.0  # ar_ema_halflife

    @classmethod
    def from_official_config(cls, config) -> OfficialStage1Settings:
        """Read the settings from a resolved official config (:class:`~prologue_hf.conversion.OfficialConfig`)."""
        get = config.get
        return cls(
            lr_encoder=float(get("lr_enc")),
            lr_decoder=float(get("lr_dec")),
            lr_ar=float(get("lr_ar")),
            betas_autoencoder=(float(get("beta1")), float(get("beta2"))),
            betas_ar=(float(get("ar_beta1")), float(get("ar_beta2"))),
            weight_decay_encoder=float(get("weight_decay_enc")),
            weight_decay_decoder=float(get("weight_decay_dec")),
            weight_decay_ar=float(get("weight_decay_ar")),
            l1_weight=float(get("l1_weight")),
            commitment_weight=float(get("commitment_loss_weight")),
            entropy_weight=float(get("entropy_loss_weight")),
            vq_beta=float(get("Quantizer.vq_beta")),
            prologue_vq_beta=float(get("SemanticQuantizer.vq_beta", get("Quantizer.vq_beta"))),
            prior_weight_prologue=float(get("prior_enc_semantic_weight")),
            prior_weight_visual=float(get("prior_enc_visual_weight")),
            visual_dropout=float(get("prior_visual_dropout")),
            label_drop_prob=float(get("label_drop_prob")),
            ste_ar_embedding=bool(get("ARModel.ste_ar_embedding", False)),
            ema_halflife_autoencoder=float(get("ae_ema_halflife")),
            ema_halflife_ar=float(get("ar_ema_halflife")),
        )

    @staticmethod
    def unsupported_official_settings(config) -> list[str]:
        """Official settings this implementation does not follow, as messages (empty = all supported)."""
        problems = []
        for key in ("grad_clip_enc", "grad_clip_dec", "grad_clip_ar"):
            if float(config.get(key, 0.0)) > 0:
                problems.append(f"{key} = {config.get(key)} (gradient clipping is not part of the official mode)")
        if config.get("ae_no_label", False) is not True:
            problems.append("ae_no_label must be true (a class-conditional tokenizer is not supported)")
        if config.get("use_label", True) is not True:
            problems.append("use_label must be true")
        for key in ("Quantizer.use_entropy_loss", "SemanticQuantizer.use_entropy_loss", "SemanticQuantizer.use_quant_loss"):
            if config.get(key, False):
                problems.append(f"{key} = true (the released recipe keeps these terms detached)")
        if config.get("Quantizer.use_quant_loss", True) is not True:
            problems.append("Quantizer.use_quant_loss must be true (the visual VQ loss trains the encoder and codebook)")
        if config.get("Quantizer.monitor_metrics", True) is not True or config.get("SemanticQuantizer.monitor_metrics", True) is not True:
            problems.append("monitor_metrics must be true (the detached quantizer terms are part of the official loss value)")
        return problems


def quantizer_entropy_terms(logits: torch.Tensor, temperature: float = 0.01, eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """The official (MAGVIT-style) quantizer entropy monitor of cosine ``logits`` ``[..., codebook]``, detached.

    ``p = softmax(logits / temperature)``; ``sample_entropy`` = mean per-token entropy of ``p``; ``batch_entropy`` =
    entropy of the mean ``p`` (``log(mean + eps)``); ``entropy_loss = sample - batch``.
    """
    scaled = logits.detach().float().reshape(-1, logits.shape[-1]) / temperature
    probs = scaled.softmax(-1)
    sample = -(probs * scaled.log_softmax(-1)).nan_to_num(0.0).sum(-1).mean()
    mean_probs = probs.mean(0)
    batch = -(mean_probs * (mean_probs + eps).log()).sum()
    return {"sample_entropy": sample, "batch_entropy": batch, "entropy_loss": sample - batch}


def official_ar_weight_decay_groups(ar_map: OfficialParameterMap) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(decay, no_decay)`` parameters of the AR by the official rule: no decay when the official tensor has rank < 2
    or its name contains ``bias``, ``norm`` or ``adaln``. A tensor of ours holding several official ones (the shared
    embedding table = ``semantic_emb`` + ``bos_emb``) must get one answer from all of them."""
    verdict: dict[int, tuple[nn.Parameter, bool, str]] = {}
    for name in ar_map.names():
        decay = ar_map.read(name).dim() >= 2 and not any(word in name for word in ("bias", "norm", "adaln"))
        for param in ar_map.parameters(name):
            seen = verdict.get(id(param))
            if seen is not None and seen[1] != decay:
                raise ValueError(f"{name} and {seen[2]} share a tensor but not a weight-decay group")
            verdict[id(param)] = (param, decay, name)
    decay = [p for p, d, _ in verdict.values() if d]
    no_decay = [p for p, d, _ in verdict.values() if not d]
    return decay, no_decay


def _unique_parameters(official_map: OfficialParameterMap) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for name in official_map.names():
        for param in official_map.parameters(name):
            seen.setdefault(id(param), param)
    return list(seen.values())


@dataclass
class OfficialStepOutput:
    """What one global step computed: ``losses`` (official names, detached 0-d tensors), ``tensors`` (ids, logits, ...)
    and, with ``record_grad_norms``, ``grad_norms`` ``{official name: float64 L2 norm}`` of the trained module."""

    losses: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_norms: dict[str, dict[str, float]] = field(default_factory=dict)


class OfficialStage1Stepper:
    """Runs the official stage-1 iteration (encoder(+decoder) step, then AR step) on parametrized models.

    Serves the stage 1 of a :class:`PrologueTokenizerModel` (maps ``enc``, ``dec``, ``ar``) and of Prologue-Post, a
    :class:`ProloguePostModel` over its frozen tokenizer (maps ``enc`` = the prologue encoder + quantizer, ``ar``).
    The official Post run (``phases: DO_PRIOR_ENC,DO_PRIOR_AR:1,1``) is this iteration without the decoder and the
    reconstruction terms: the encoder step trains only the prologue encoder and quantizer (``semantic_parameters()``)
    with the AR frozen, loss ``prior_enc_loss`` plus the detached prologue-quantizer monitor; the AR step is unchanged.

    Gradient accumulation: ``encoder_step(..., loss_scale=1/n, update=False)`` on each of ``n`` micro-batches, then
    :meth:`update_encoder`, then ``ar_step(loss_scale=1/n, update=False)`` ``n`` times (one per cached micro-batch,
    in order) and :meth:`update_ar`. Every AR step still reads ids computed before the encoder update; the order
    "all encoder micro-steps, encoder update, all AR micro-steps, AR update" is enforced.

    An optimizer whose learning rate is 0 (the first step of a warmup) does not step and its EMA is not updated,
    as in the official loop (``if cur_lr > 0: opt.step()``); its gradients are cleared all the same.

    Args:
        tokenizer: a :class:`PrologueTokenizerModel` or :class:`ProloguePostModel` in the official parameterisation.
        ar: the compact :class:`PrologueARForCausalLM` in the official parameterisation.
        maps: ``{"enc", "dec", "ar"}`` official parameter maps (from the parametrization / the converter); no
            ``"dec"`` for a :class:`ProloguePostModel`.
        settings: :class:`OfficialStage1Settings`.
        keep_ar_logits: also return the AR logits ``[B, T, V + P + 1]`` of every step (``tensors["ar_logits"]``,
            for the fixture replay). Without them (the trainer) the LM head runs fused with the cross-entropy
            (:func:`~prologue_hf.training.losses.prologue_ar_loss_from_hidden`, on the predicting positions only),
            so the float logits, their log-softmax and its backward are never materialised; with them the loss
            takes the same fused path and the logits are an extra no-grad head product.
    """

    def __init__(
        self,
        tokenizer: PrologueTokenizerModel | ProloguePostModel,
        ar: PrologueARForCausalLM,
        maps: dict[str, OfficialParameterMap],
        settings: OfficialStage1Settings,
        keep_ar_logits: bool = False,
    ):
        if tokenizer.prologue_quantizer is None or not ar.vocabulary.has_prologue:
            raise ValueError("the official stage-1 step needs a Prologue tokenizer (K > 0) and a matching AR")
        self.is_post = isinstance(tokenizer, ProloguePostModel)
        expected = {"enc", "ar"} if self.is_post else {"enc", "dec", "ar"}
        if set(maps) != expected:
            kind = "a ProloguePostModel" if self.is_post else "a PrologueTokenizerModel"
            raise ValueError(f"maps of {kind} must be {sorted(expected)}, got {sorted(maps)}")
        self.tokenizer, self.ar, self.maps, self.settings = tokenizer, ar, maps, settings
        self.keep_ar_logits = keep_ar_logits
        self.encoder_modules = ("enc",) if self.is_post else ("enc", "dec")
        s = settings
        self.parameters = {name: _unique_parameters(m) for name, m in maps.items()}
        lrs = {"enc": s.lr_encoder, "dec": s.lr_decoder}
        decays = {"enc": s.weight_decay_encoder, "dec": s.weight_decay_decoder}
        self.optimizers = {
            name: build_adamw(
                self.parameters[name], lr=lrs[name], betas=s.betas_autoencoder, eps=s.adam_eps, weight_decay=decays[name]
            )
            for name in self.encoder_modules
        }
        decay, no_decay = official_ar_weight_decay_groups(maps["ar"])
        self.optimizers["ar"] = build_adamw(
            [{"params": decay, "weight_decay": s.weight_decay_ar}, {"params": no_decay, "weight_decay": 0.0}],
            lr=s.lr_ar, betas=s.betas_ar, eps=s.adam_eps,
        )
        rates = {"enc": s.ema_halflife_autoencoder, "dec": s.ema_halflife_autoencoder, "ar": s.ema_halflife_ar}
        self.ema_rates = {k: ema_rate(rates[k]) for k in maps}
        # the official update ``ema.copy_(p.lerp(ema, rate))`` equals, bit for bit, the in-place
        # ``ema.lerp_(p, 1 - rate)`` when ``1 - rate`` is taken in float32 (both round ``ema + (1 - rate) * (p - ema)``
        # once): no new tensor and no copy per parameter and step
        self.ema_weights = {k: float(1.0 - torch.tensor(r, dtype=torch.float32)) for k, r in self.ema_rates.items()}
        self.ema = {k: [p.detach().clone() for p in self.parameters[k]] for k, r in self.ema_rates.items() if r > 0}
        self._pending: list[dict[str, torch.Tensor]] = []  # ids of encoder micro-steps whose AR step is due
        self._encoder_update_due = False

    # ------------------------------------------------------------------------------------------------ helpers
    def _train_only(self, modules: tuple[str, ...]) -> None:
        for name, params in self.parameters.items():
            for p in params:
                p.requires_grad_(name in modules)

    def _grad_norms(self, modules: tuple[str, ...]) -> dict[str, dict[str, float]]:
        out = {}
        for module in modules:
            norms = {}
            for name in self.maps[module].names():
                grad = self.maps[module].read(name, grad=True)
                norms[name] = float(grad.double().norm()) if grad is not None else 0.0
            out[module] = norms
        return out

    @torch.no_grad()
    def _ema_update(self, module: str) -> None:
        if module in self.ema:
            torch._foreach_lerp_(self.ema[module], [p.detach() for p in self.parameters[module]], self.ema_weights[module])

    def _step(self, modules: tuple[str, ...]) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # the models run outside any DDP wrapper: average the gradients over processes here, as DDP would
            world = torch.distributed.get_world_size()
            for module in modules:
                for p in self.parameters[module]:
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad.div_(world)
        stepped = []
        for module in modules:
            optimizer = self.optimizers[module]
            if max(group["lr"] for group in optimizer.param_groups) > 0:  # official: no step (and no EMA) at lr 0
                optimizer.step()
                stepped.append(module)
            optimizer.zero_grad(set_to_none=True)
        for module in stepped:
            self._ema_update(module)

    def _ar_terms(
        self, class_ids: torch.Tensor, visual_ids: torch.Tensor, prologue_ids: torch.Tensor,
        prologue_soft_onehot: torch.Tensor | None, drop: torch.Tensor, weights: tuple[float, float, float],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor]:
        """``(loss, logged parts and hit rates, logits [B, T, V + P + 1] (None unless keep_ar_logits), targets [B, T])``."""
        vocabulary = self.ar.vocabulary
        embeds = self.ar.embed_sequence(
            class_ids, visual_ids=visual_ids, prologue_soft_onehot=prologue_soft_onehot, prologue_ids=prologue_ids,
            drop_visual=drop if bool(drop.any()) else None,
        )
        sequence = vocabulary.build_sequence(class_ids, visual_ids, prologue_ids)
        # the official logits have only V + P + 1 columns (no class ids): the CE runs over those
        out, logits = causal_lm_prologue_ar_loss(
            self.ar, sequence, vocabulary, weights, inputs_embeds=embeds, num_columns=vocabulary.class_offset,
            keep_logits=self.keep_ar_logits,
        )
        numel = out.token_loss.numel()
        parts = {seg: out.segment_stats[i, 0] / numel for i, seg in enumerate(("semantic", "eos", "visual"))}
        correct = out.correct.float()
        positions = vocabulary.segment_positions
        metrics = {
            "correct_token_rate": correct.mean(),
            "semantic_correct_token_rate": correct[:, positions["prologue"]].mean(),
            "visual_correct_token_rate": correct[:, positions["visual"]].mean(),
        }
        return out.loss, {**parts, **metrics}, None if logits is None else logits[:, :-1].detach(), sequence[:, 1:]

    def zero_grad(self) -> None:
        """Drop every gradient of the trained modules and every pending micro-step."""
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        self._pending, self._encoder_update_due = [], False

    def _draw_labels(self, class_labels: torch.Tensor | None, batch: int, drop: torch.Tensor | None) -> torch.Tensor:
        null = self.ar.vocabulary.num_classes
        if class_labels is None:
            return torch.full((batch,), null, dtype=torch.long)
        class_labels = class_labels.long()
        class_labels = torch.where(class_labels < 0, torch.full_like(class_labels, null), class_labels)
        if drop is None and self.settings.label_drop_prob > 0:
            drop = (torch.rand((batch, 1)) < self.settings.label_drop_prob)[:, 0]
        if drop is not None:
            class_labels = torch.where(drop.to(class_labels.device), torch.full_like(class_labels, null), class_labels)
        return class_labels

    def _draw_visual_drop(self, batch: int, mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        if mask is not None:
            return mask.to(device=device, dtype=torch.bool)
        if self.settings.visual_dropout > 0:
            return torch.rand(batch) < self.settings.visual_dropout
        return torch.zeros(batch, dtype=torch.bool, device=device)

    def _semantic_vq_terms(self, out) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, quantization MSE, entropy terms)`` of the prologue quantizer in the encoder step. Only the
        entropy loss carries a gradient: the MSE terms are computed under ``no_grad``."""
        s = self.settings
        prologue_entropy = quantizer_entropy_terms(out.prologue_logits, s.entropy_temperature)
        with torch.no_grad():
            codes = self.tokenizer.prologue_quantizer.lookup(out.prologue_ids)
            z = out.prologue_features
            semantic_quant = F.mse_loss(out.prologue_quantized, z) + (1.0 + s.prologue_vq_beta) * F.mse_loss(codes, z)
        semantic_vq = s.commitment_weight * semantic_quant + s.entropy_weight * prologue_entropy["entropy_loss"]
        return semantic_vq, semantic_quant, prologue_entropy

    def _autoencoder_terms(self, out, pixel_values: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
        """``(loss, logged terms, tensors)`` of the reconstruction side of the encoder step: L1 + the visual VQ loss
        (with gradient) + the detached visual entropy monitor. None for Prologue-Post: its visual pathway is frozen
        and its quantizer internals are not exposed (the official Post run adds the frozen quantizer's VQ monitor to
        the logged value only; it carries no gradient)."""
        if self.is_post:
            return pixel_values.new_zeros((), dtype=torch.float32), {}, {}
        s = self.settings
        target = patchify(pixel_values.float(), self.tokenizer.config.patch_size)
        x_hat = patchify(out.reconstruction.float(), self.tokenizer.config.patch_size)
        l1 = s.l1_weight * (target - x_hat).abs().mean()
        visual_entropy = quantizer_entropy_terms(out.visual_logits, s.entropy_temperature)
        visual_quant = out.quantizer_loss.float()
        visual_vq = s.commitment_weight * visual_quant + s.entropy_weight * visual_entropy["entropy_loss"]
        losses = {
            "l1_loss": l1, "ae_loss": l1, "visual_vq_quant_loss": visual_quant,
            "visual_vq_entropy_loss": visual_entropy["entropy_loss"], "visual_vqloss": visual_vq,
            "visual_vq_sample_entropy": visual_entropy["sample_entropy"],
            "visual_vq_batch_entropy": visual_entropy["batch_entropy"],
        }
        tensors = {"x_hat": x_hat.detach(), "reconstruction": out.reconstruction.detach()}
        return l1 + visual_vq, losses, tensors

    # ----------------------------------------------------------------------------------------------- the steps
    def encoder_step(
        self,
        pixel_values: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        label_drop_mask: torch.Tensor | None = None,
        visual_drop_mask: torch.Tensor | None = None,
        record_grad_norms: bool = False,
        extra_loss=None,
        loss_scale: float = 1.0,
        update: bool = True,
    ) -> OfficialStepOutput:
        """Global step 1 of an iteration: encoder (+ decoder) update with the AR frozen.

        Args:
            pixel_values: ``[B, C, H, W]`` in ``[-1, 1]``.
            class_labels: ``[B]`` class ids in ``[0, C)`` (None: unlabelled, every BOS is the null class; entries
                ``< 0`` are unlabelled rows and get the null class too).
            label_drop_mask / visual_drop_mask: ``[B]`` bool, injected draws (None: drawn from torch's generator).
            extra_loss: optional ``extra_loss(tokenizer_output, pixel_values, l1) -> (loss, metrics)`` added to the
                encoder-side loss (the trainer's perceptual and adversarial terms; the official ``ae_loss`` and
                ``gan_G_loss``).
            loss_scale: the backward runs on ``loss_scale * loss`` (``1 / n`` for ``n`` accumulated micro-batches);
                the logged losses are unscaled.
            update: step the encoder's optimizer(s) now (``False``: accumulate; call :meth:`update_encoder`).

        Raises ``FloatingPointError`` before any update when the loss is not finite.
        """
        if self._pending and not self._encoder_update_due:
            raise RuntimeError("the AR steps of the previous encoder update are still due: call ar_step first")
        s = self.settings
        self._train_only(self.encoder_modules)
        self.tokenizer.train()
        self.ar.eval()
        batch = pixel_values.shape[0]
        class_ids = self._draw_labels(class_labels, batch, label_drop_mask)
        out = self.tokenizer(pixel_values)
        autoencoder, ae_losses, ae_tensors = self._autoencoder_terms(out, pixel_values)

        semantic_vq, semantic_quant, prologue_entropy = self._semantic_vq_terms(out)

        drop = self._draw_visual_drop(batch, visual_drop_mask, pixel_values.device)
        weights = (s.prior_weight_prologue, s.prior_weight_prologue, s.prior_weight_visual)
        soft = out.prologue_soft_onehot if s.ste_ar_embedding else None
        prior, parts, logits, targets = self._ar_terms(class_ids, out.visual_ids, out.prologue_ids, soft, drop, weights)
        loss = autoencoder + semantic_vq + prior
        extra_metrics: dict[str, torch.Tensor] = {}
        if extra_loss is not None:
            extra, extra_metrics = extra_loss(out, pixel_values, ae_losses.get("l1_loss", autoencoder.new_zeros(())))
            loss = loss + extra
        if not bool(torch.isfinite(loss.detach())):
            self.zero_grad()
            raise FloatingPointError(f"non-finite encoder-step loss {float(loss):.4g}; no parameter was updated")
        (loss * loss_scale if loss_scale != 1.0 else loss).backward()
        grad_norms = self._grad_norms(self.encoder_modules) if record_grad_norms else {}
        self._pending.append(
            {"class_ids": class_ids, "visual_ids": out.visual_ids.detach(), "prologue_ids": out.prologue_ids.detach()}
        )
        self._encoder_update_due = True
        if update:
            self.update_encoder()
        raw = parts["semantic"] + parts["eos"] + parts["visual"]
        visual_vq = ae_losses.get("visual_vqloss", autoencoder.new_zeros(()))
        losses = {
            "loss": loss, **ae_losses, "semantic_vq_quant_loss": semantic_quant,
            "semantic_vq_entropy_loss": prologue_entropy["entropy_loss"], "semantic_vqloss": semantic_vq,
            "vqloss": visual_vq + semantic_vq,
            "semantic_prior_enc_loss": parts["semantic"], "eos_prior_enc_loss": parts["eos"],
            "visual_prior_enc_loss": parts["visual"], "raw_prior_enc_loss": raw, "prior_enc_loss": prior,
            "semantic_vq_sample_entropy": prologue_entropy["sample_entropy"],
            "semantic_vq_batch_entropy": prologue_entropy["batch_entropy"],
            **extra_metrics,
        }
        tensors = {
            "indices": torch.cat([out.prologue_ids, out.visual_ids], dim=1).detach(), "ar_targets": targets, "visual_drop_mask": drop, "class_ids": class_ids,
            "prologue_logits": out.prologue_logits.detach(), **ae_tensors,
        }
        if logits is not None:
            tensors["ar_logits"] = logits
        return OfficialStepOutput({k: v.detach().float() for k, v in losses.items()}, tensors, grad_norms)

    def update_encoder(self) -> None:
        """Step the encoder's (and decoder's) optimizer on the gradients of the encoder micro-steps so far."""
        if not self._encoder_update_due:
            raise RuntimeError("update_encoder needs the gradients of an encoder_step: call encoder_step first")
        self._step(self.encoder_modules)
        self._encoder_update_due = False

    def ar_step(
        self,
        visual_drop_mask: torch.Tensor | None = None,
        record_grad_norms: bool = False,
        loss_scale: float = 1.0,
        update: bool = True,
    ) -> OfficialStepOutput:
        """Global step 2 of an iteration: AR update on the ids the encoder step computed (before its update), with the
        same class labels and a new visual-dropout mask (``visual_drop_mask`` injects it). With accumulated
        micro-batches each call takes the oldest one still due; ``loss_scale`` / ``update`` as in
        :meth:`encoder_step` (:meth:`update_ar` steps)."""
        if not self._pending:
            raise RuntimeError("ar_step needs the ids of an encoder_step on the same batch: call encoder_step first")
        if self._encoder_update_due:
            raise RuntimeError("the official order updates the encoder before the AR step: call update_encoder first")
        cache = self._pending.pop(0)
        self._train_only(("ar",))
        self.ar.train()
        visual_ids = cache["visual_ids"]
        drop = self._draw_visual_drop(visual_ids.shape[0], visual_drop_mask, visual_ids.device)
        loss, parts, logits, targets = self._ar_terms(
            cache["class_ids"], visual_ids, cache["prologue_ids"], None, drop, (1.0, 1.0, 1.0)
        )
        if not bool(torch.isfinite(loss.detach())):
            self.zero_grad()
            raise FloatingPointError(f"non-finite AR-step loss {float(loss):.4g}; the AR was not updated")
        (loss * loss_scale if loss_scale != 1.0 else loss).backward()
        grad_norms = self._grad_norms(("ar",)) if record_grad_norms else {}
        if update:
            self.update_ar()
        losses = {
            "loss": loss, "prior_ar_loss": loss, "semantic_prior_ar_loss": parts["semantic"],
            "eos_prior_ar_loss": parts["eos"], "visual_prior_ar_loss": parts["visual"],
            "correct_token_rate": parts["correct_token_rate"],
            "semantic_correct_token_rate": parts["semantic_correct_token_rate"],
            "visual_correct_token_rate": parts["visual_correct_token_rate"],
        }
        tensors = {"ar_targets": targets, "visual_drop_mask": drop}
        if logits is not None:
            tensors["ar_logits"] = logits
        return OfficialStepOutput({k: v.detach().float() for k, v in losses.items()}, tensors, grad_norms)

    @property
    def pending_ar_steps(self) -> int:
        """Micro-batches whose AR step is still due."""
        return len(self._pending)

    def update_ar(self) -> None:
        """Step the AR's optimizer on the gradients of the AR micro-steps so far."""
        self._step(("ar",))

    def iteration(self, pixel_values: torch.Tensor, class_labels: torch.Tensor | None = None) -> dict[str, float]:
        """One official iteration on a batch (both steps, draws from torch's generator); the logged scalars
        (``enc/…`` and ``ar/…``) as floats."""
        enc = self.encoder_step(pixel_values, class_labels)
        ar = self.ar_step()
        logs = {f"enc/{k}": float(v) for k, v in enc.losses.items()}
        logs.update({f"ar/{k}": float(v) for k, v in ar.losses.items()})
        return logs


def ema_rate(halflife: float) -> float:
    """``0.5 ** (1 / halflife)`` (0 when ``halflife <= 0``), the official EMA rate per optimizer step."""
    return math.pow(0.5, 1.0 / halflife) if halflife > 0 else 0.0


__all__ = [
    "OfficialStage1Settings",
    "OfficialStage1Stepper",
    "OfficialStepOutput",
    "official_ar_weight_decay_groups",
    "quantizer_entropy_terms",
]
