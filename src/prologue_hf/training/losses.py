"""The routed stage-1 loss of Prologue (paper section 2, Eq. 2; appendix E "Stage 1").

    L = l1 * L1 + w_lpips * LPIPS + w_gan * GAN_G + w_commit * VQ + lambda * L_AR          (generator side)
      + w_disc * (GAN_D + w_lecam * LeCam + w_r1 / 2 * R1)                                 (discriminator side)

Paper defaults: ``l1 = 1, w_lpips = 1, w_gan = 0.1, w_commit = 1, lambda = 3``. The two sides touch disjoint
parameters (the generator term sees the discriminator through *detached* weights, the discriminator term sees the
reconstruction detached), so one backward pass gives every module its own gradient.

``L_AR`` is the compact AR's cross-entropy over the whole sequence ``[class][prologue x K][EOS][visual x N]``
(mean over the ``K + 1 + N`` predicted positions, the official normalisation). Where the gradient goes is decided
by what the AR *input* is made of (``ar_target``):

* ``"prologue"`` (Prologue): prologue inputs are ``p~ @ W_emb`` with ``p~`` the Prob-STE soft one-hot, visual inputs
  are discrete ids. ``dL_AR`` reaches the encoder through the prologue quantizer only; the visual codebook and the
  decoder receive exactly zero. With probability ``visual_dropout`` (0.5) per sample, every visual *input* becomes
  EOS (targets unchanged), so the AR must predict the image from the prologue (paper section 2.2).
* ``"visual"`` ("AR regularisation on visual tokens", Fig. 5 baseline, K = 0): visual inputs are
  ``softmax(cos / tau_v) + sg(onehot - softmax)`` over the visual codebook (the official code's quantizer one-hot,
  ``tau_v = 1``), so ``dL_AR`` reaches the visual codebook and encoder directly with weight lambda.
* ``"none"``: no AR term (2D ``K = 0`` and 1D baselines of Table 3).

Targets are discrete ids, so they carry no gradient: the official code optimises ``log p(z_p)`` only through the
inputs. ``prologue_target_gradient=True`` makes the prologue targets the soft one-hot ``p~`` instead (same forward
value, since ``p~`` equals the hard one-hot in the forward pass): the encoder then also gets the gradient of the
ELBO's ``log p_theta(z_p)`` term with respect to its own assignment, i.e. it is pulled towards codes the AR finds
likely (the ``H(z_p)`` direction of appendix C).

The compact AR's own parameters are trained by the same ``lambda * L_AR`` (Adam makes the constant scale immaterial).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput, logging

from ..models.modeling_prologue_ar import PrologueARForCausalLM
from ..models.modeling_prologue_tokenizer import PrologueTokenizerEncoderOutput
from ..models.quantizers import straight_through_onehot
from ..vocabulary import SEGMENTS, PrologueVocabulary

logger = logging.get_logger(__name__)

PERCEPTUAL_LOSSES = ("lpips-vgg", "convnext-s", "none", "lpips-vgg-untrained-trunk")
GAN_LOSSES = ("vanilla", "hinge")
AR_TARGETS = ("auto", "prologue", "visual", "none")


# ============================================================================================ configuration
@dataclass
class PrologueStage1LossConfig:
    """Weights and switches of the stage-1 loss (paper appendix E defaults; official ``train/ae.yaml`` where the
    paper is silent)."""

    l1_weight: float = field(default=1.0, metadata={"help": "Weight of the pixel L1 loss (paper: 1)."})
    perceptual_weight: float = field(default=1.0, metadata={"help": "Weight of the perceptual loss (paper: 1)."})
    perceptual_loss: str = field(
        default="lpips-vgg",
        metadata={
            "help": "Perceptual backbone: 'lpips-vgg' (paper B; needs torchvision's VGG16 ImageNet weights), "
            "'convnext-s' (paper L; ConvNeXt-S logit MSE, needs torchvision's ConvNeXt-S weights), 'none' (explicitly "
            "no perceptual term) or 'lpips-vgg-untrained-trunk' (explicitly a RANDOM VGG trunk, for tests only)."
        },
    )
    perceptual_weights_path: str | None = field(
        default=None,
        metadata={"help": "Local torchvision state dict (.pth or .safetensors) of VGG16 / ConvNeXt-S, instead of the torch hub cache."},
    )
    gan_weight: float = field(default=0.1, metadata={"help": "Weight of the generator's adversarial loss (paper: 0.1); 0 disables the GAN."})
    gan_loss: str = field(default="vanilla", metadata={"help": "'vanilla' (non-saturating softplus, official) or 'hinge'."})
    gan_start_step: int = field(default=0, metadata={"help": "Optimizer step from which both GAN terms are on (official: 0)."})
    adaptive_gan_weight: bool = field(
        default=False,
        metadata={"help": "Scale w_gan by ||grad L_rec|| / ||grad GAN_G|| at the decoder's last layer (taming-style; official: off)."},
    )
    discriminator_weight: float = field(default=1.0, metadata={"help": "Weight of the discriminator loss (official gan_D_weight: 1)."})
    lecam_weight: float = field(default=0.0, metadata={"help": "LeCam regulariser weight on the discriminator (official: 0.001)."})
    r1_weight: float = field(default=0.0, metadata={"help": "R1 penalty weight gamma, applied as gamma/2 * E||grad D(x)||^2 (official: 0.01)."})
    r1_interval: int = field(default=25, metadata={"help": "Apply R1 on steps with (step + 1) % r1_interval == 0 (official: 25)."})
    commitment_weight: float = field(default=1.0, metadata={"help": "Weight of the visual VQ loss (codebook + 0.25 commitment; paper: 1)."})
    ar_weight: float = field(default=3.0, metadata={"help": "lambda, weight of the compact AR's cross-entropy (paper: 3)."})
    ar_target: str = field(
        default="auto",
        metadata={"help": "'prologue' (Prologue), 'visual' (AR-regularisation baseline, K=0), 'none' (no AR), 'auto' (prologue iff K>0)."},
    )
    visual_dropout: float = field(default=0.5, metadata={"help": "Per-sample probability that all visual AR inputs become EOS (paper: 0.5)."})
    ar_label_drop_prob: float = field(
        default=1.0,
        metadata={"help": "Probability that the compact AR sees the null class instead of the label (official stage 1: 1.0, unconditional)."},
    )
    prologue_target_gradient: bool = field(
        default=False,
        metadata={"help": "Use the Prob-STE soft one-hot as the prologue *targets* too, so log p(z_p) also back-propagates through them (official: off)."},
    )
    visual_soft_temperature: float = field(
        default=1.0, metadata={"help": "tau_v of the visual soft one-hot in the 'visual' AR-regularisation baseline (official quantizer: 1.0)."}
    )

    def __post_init__(self):
        if self.perceptual_loss not in PERCEPTUAL_LOSSES:
            raise ValueError(f"perceptual_loss must be one of {PERCEPTUAL_LOSSES}, got {self.perceptual_loss!r}")
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {self.gan_loss!r}")
        if self.ar_target not in AR_TARGETS:
            raise ValueError(f"ar_target must be one of {AR_TARGETS}, got {self.ar_target!r}")
        for name in ("visual_dropout", "ar_label_drop_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("l1_weight", "perceptual_weight", "gan_weight", "discriminator_weight", "lecam_weight", "r1_weight",
                     "commitment_weight", "ar_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.r1_interval < 1:
            raise ValueError(f"r1_interval must be >= 1, got {self.r1_interval}")
        if self.visual_soft_temperature <= 0:
            raise ValueError(f"visual_soft_temperature must be > 0, got {self.visual_soft_temperature}")

    def resolved_ar_target(self, has_prologue: bool) -> str:
        """``ar_target`` with ``"auto"`` decided for a tokenizer with (``"prologue"``) or without (``"none"``)
        prologue tokens; ``ValueError`` when the target does not fit the tokenizer (prologue tokens have no other
        training signal than the prologue target)."""
        target = self.ar_target if self.ar_target != "auto" else ("prologue" if has_prologue else "none")
        if has_prologue and target != "prologue":
            raise ValueError(f"a tokenizer with prologue tokens needs ar_target='prologue' (their only signal), got {target!r}")
        if target == "prologue" and not has_prologue:
            raise ValueError("ar_target='prologue' needs num_prologue_tokens > 0")
        return target


# ============================================================================================ perceptual losses
class PerceptualWeightsUnavailableError(RuntimeError):
    """Raised when a perceptual loss needs pretrained weights that are not on this machine."""


def _cached_torchvision_weights(weights) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def _resolve_weights(weights, weights_path: str | None, what: str, option: str) -> dict[str, torch.Tensor]:
    path = weights_path or _cached_torchvision_weights(weights)
    if not os.path.isfile(path):
        raise PerceptualWeightsUnavailableError(
            f"{what} needs torchvision's pretrained weights, not found at {path}. This machine cannot download them. "
            f"Put the file there (torchvision URL {weights.url}), or pass perceptual_weights_path=<local .pth/.safetensors>, "
            f"or choose perceptual_loss='none' explicitly. '{option}' never falls back to random weights."
        )
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


class _FrozenPerceptual(nn.Module):
    """A perceptual network is a fixed metric: always eval mode (LPIPS has dropout), never trained."""

    def train(self, mode: bool = True):
        return super().train(False)


class LPIPSVGGLoss(_FrozenPerceptual):
    """LPIPS v0.1 with a VGG16 trunk, from the ``lpips`` package (Zhang et al. 2018; paper B tokenizer).

    What ships where: the ``lpips`` wheel contains the calibrated linear heads (``lpips/weights/v0.1/vgg.pth``), but
    its VGG16 trunk is torchvision's ImageNet model, which ``lpips.LPIPS(pretrained=True)`` downloads
    (``vgg16-397923af.pth`` into ``torch.hub.get_dir()/checkpoints``). Offline that download fails, so this class
    builds the trunk empty and loads the torchvision file itself, from the hub cache or ``vgg_weights_path``, and
    raises :class:`PerceptualWeightsUnavailableError` when it is absent. ``untrained_trunk=True`` keeps the random trunk
    on purpose (tests only; logged as a warning). Inputs in ``[-1, 1]``; returns ``[B]`` distances.
    """

    def __init__(self, vgg_weights_path: str | None = None, untrained_trunk: bool = False):
        super().__init__()
        import lpips
        from torchvision.models import VGG16_Weights

        state = None if untrained_trunk else _resolve_weights(VGG16_Weights.IMAGENET1K_V1, vgg_weights_path, "LPIPS-VGG", "lpips-vgg")
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
            warnings.simplefilter("ignore")
            self.lpips = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        if state is None:
            logger.warning("LPIPS with an UNTRAINED VGG16 trunk: the perceptual loss is not perceptual (tests only)")
        else:
            trunk = {}
            for name, _ in self.lpips.net.named_parameters():  # "slice{k}.{i}.weight" <- torchvision "features.{i}.weight"
                _, index, kind = name.split(".")
                trunk[name] = state[f"features.{index}.{kind}"]
            self.lpips.net.load_state_dict(trunk)
        self.requires_grad_(False).eval()

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lpips(reconstruction, target).flatten()


class ConvNeXtPerceptualLoss(_FrozenPerceptual):
    """ConvNeXt-S logit loss (paper L tokenizer; official ``ConvNeXtPerceptualLoss``, after TiTok/AliTok).

    ``[-1, 1] -> [0, 1] -> resize 224 (bilinear, antialias) -> ImageNet normalisation -> ConvNeXt-S logits``;
    returns the per-image MSE between the logits of reconstruction and target, ``[B]``. Needs torchvision's
    ``convnext_small-0c510722.pth`` (hub cache or ``weights_path``), else :class:`PerceptualWeightsUnavailableError`.
    """

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        from torchvision.models import ConvNeXt_Small_Weights, convnext_small

        state = _resolve_weights(ConvNeXt_Small_Weights.IMAGENET1K_V1, weights_path, "ConvNeXt-S perceptual loss", "convnext-s")
        self.network = convnext_small(weights=None)
        self.network.load_state_dict(state)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406])[None, :, None, None], persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225])[None, :, None, None], persistent=False)
        self.requires_grad_(False).eval()

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        images = F.interpolate(images * 0.5 + 0.5, size=224, mode="bilinear", align_corners=False, antialias=True)
        return self.network((images - self.mean) / self.std)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self._logits(reconstruction), self._logits(target), reduction="none").mean(-1)


def build_perceptual_loss(name: str, weights_path: str | None = None) -> nn.Module | None:
    """The perceptual module named by ``PrologueStage1LossConfig.perceptual_loss`` (``None`` for ``"none"``)."""
    if name == "none":
        return None
    if name == "lpips-vgg":
        return LPIPSVGGLoss(weights_path)
    if name == "lpips-vgg-untrained-trunk":
        return LPIPSVGGLoss(untrained_trunk=True)
    if name == "convnext-s":
        return ConvNeXtPerceptualLoss(weights_path)
    raise ValueError(f"perceptual_loss must be one of {PERCEPTUAL_LOSSES}, got {name!r}")


# ============================================================================================ GAN terms
def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "vanilla") -> torch.Tensor:
    """``vanilla``: ``E softplus(-D(x)) + E softplus(D(x^))``; ``hinge``: ``(E relu(1 - D(x)) + E relu(1 + D(x^))) / 2``."""
    if kind == "vanilla":
        return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean())
    raise ValueError(f"kind must be one of {GAN_LOSSES}, got {kind!r}")


def generator_adversarial_loss(fake_logits: torch.Tensor, kind: str = "vanilla") -> torch.Tensor:
    """``vanilla`` (non-saturating): ``E softplus(-D(x^))``; ``hinge``: ``-E D(x^)``."""
    if kind == "vanilla":
        return F.softplus(-fake_logits.float()).mean()
    if kind == "hinge":
        return -fake_logits.float().mean()
    raise ValueError(f"kind must be one of {GAN_LOSSES}, got {kind!r}")


def lecam_regularizer(real_logits: torch.Tensor, fake_logits: torch.Tensor, real_ema: torch.Tensor, fake_ema: torch.Tensor) -> torch.Tensor:
    """LeCam (Tseng et al. 2021): ``E relu(D(x) - ema_fake)^2 + E relu(ema_real - D(x^))^2``."""
    return F.relu(real_logits.float() - fake_ema).pow(2).mean() + F.relu(real_ema - fake_logits.float()).pow(2).mean()


def adaptive_gan_weight(reconstruction_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """``||d L_rec / d W|| / (||d GAN_G / d W|| + 1e-4)`` at the decoder's last layer ``W``, clamped to ``[0, 1e4]``
    and detached (Esser et al. 2021)."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


# ============================================================================================ the AR cross-entropy
@dataclass
class PrologueARLossOutput(ModelOutput):
    """Output of :func:`prologue_ar_loss`.

    Attributes:
        loss: scalar, ``sum_t w[seg(t)] * CE_t / (B * (K + 1 + N))`` (all weights 1: the mean CE).
        token_loss: ``[B, K + 1 + N]`` CE of each predicted token (float32).
        correct: ``[B, K + 1 + N]`` bool, top-1 prediction equals the target.
        segment_stats: ``[3, 3]`` float: rows prologue / EOS / visual, columns (CE sum, correct count, token count).
    """

    loss: torch.Tensor | None = None
    token_loss: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    segment_stats: torch.Tensor | None = None


def prologue_ar_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    vocabulary: PrologueVocabulary,
    segment_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    soft_prologue_targets: torch.Tensor | None = None,
) -> PrologueARLossOutput:
    """Next-token CE of a full AR sequence, with per-segment statistics: the one AR cross-entropy of the library
    (stage 1's compact AR through :func:`routed_ar_loss`, Prologue-Post, stage 2's trainer).

    Logits at position ``t`` predict ``input_ids[:, t + 1]``; the segment (prologue / EOS / visual) of each predicted
    position comes from the vocabulary.

    Args:
        logits: ``[B, 1 + K + 1 + N, vocab]`` (the last position predicts nothing and is ignored).
        input_ids: ``[B, 1 + K + 1 + N]`` from :meth:`PrologueVocabulary.build_sequence`.
        vocabulary: the id layout (:attr:`PrologueVocabulary.segment_positions`, :meth:`PrologueVocabulary.segment_ids`).
        segment_weights: multipliers of the prologue, EOS and visual CE terms.
        soft_prologue_targets: ``[B, K, P]`` Prob-STE soft one-hots to use as the prologue targets instead of the ids
            (same forward value when they are the straight-through one-hots of those ids; the gradient of
            ``log p(z_p)`` then also flows through the targets).

    No segment mask is applied: the official training CE runs over every column of its head, visual, prologue and
    EOS ids alike (the mask is a sampling-time constraint), so the model also learns to put no mass on ids of the
    wrong segment. The softmax runs over the columns ``logits`` has: pass ``logits[..., :vocabulary.class_offset]``
    for the official head's columns (no class ids), as the stage-2 trainer does by default.
    """
    length = vocabulary.sequence_length
    if input_ids.ndim != 2 or input_ids.shape[1] != length:
        raise ValueError(f"input_ids must have shape [B, {length}], got {list(input_ids.shape)}")
    if logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits must have shape [B, {length}, vocab], got {list(logits.shape)}")
    targets = input_ids[:, 1:]  # [B, T]
    scores = logits[:, :-1].float()  # [B, T, vocab]
    # rows of [B * T, vocab]: the softmax runs over contiguous rows (the [B, vocab, T] layout made it copy and stride)
    token_loss = F.cross_entropy(scores.reshape(-1, scores.shape[-1]), targets.reshape(-1), reduction="none")
    token_loss = token_loss.view_as(targets)  # [B, T]
    if soft_prologue_targets is not None:
        positions = vocabulary.segment_positions.get("prologue")
        if positions is None:
            raise ValueError("soft_prologue_targets given, but this vocabulary has num_prologue_tokens=0")
        log_probs = scores[:, positions].log_softmax(-1)[..., vocabulary.prologue_id_slice]  # [B, K, P]
        if soft_prologue_targets.shape != log_probs.shape:
            raise ValueError(
                f"soft_prologue_targets must have shape {list(log_probs.shape)} ([B, K, P]), "
                f"got {list(soft_prologue_targets.shape)}"
            )
        soft_ce = -(soft_prologue_targets.float() * log_probs).sum(-1)  # [B, K]
        token_loss = torch.cat([token_loss[:, : positions.start], soft_ce, token_loss[:, positions.stop :]], dim=1)
    correct = scores.argmax(-1) == targets
    return _segment_weighted_loss(token_loss, correct, targets, vocabulary, segment_weights)


def _segment_weighted_loss(
    token_loss: torch.Tensor,
    correct: torch.Tensor,
    targets: torch.Tensor,
    vocabulary: PrologueVocabulary,
    segment_weights: tuple[float, float, float],
) -> PrologueARLossOutput:
    """The weighted mean of ``token_loss`` ``[B, T]`` and its per-segment statistics (shared by both AR losses)."""
    segments = vocabulary.segment_ids(token_loss.device)  # [T]
    weights = torch.as_tensor(segment_weights, dtype=token_loss.dtype, device=token_loss.device)[segments]  # [T]
    loss = (token_loss * weights).sum() / token_loss.numel()
    with torch.no_grad():
        one_hot = F.one_hot(segments, len(SEGMENTS)).to(token_loss.dtype)  # [T, 3]
        stats = torch.stack(
            [token_loss.sum(0) @ one_hot, correct.sum(0).to(token_loss.dtype) @ one_hot, one_hot.sum(0) * targets.shape[0]],
            dim=1,
        )  # [3, 3]
    return PrologueARLossOutput(loss=loss, token_loss=token_loss, correct=correct, segment_stats=stats)


class _HeadCrossEntropy(torch.autograd.Function):
    """Per-row CE of ``hidden @ weight.T`` without keeping the logits: the forward pass turns each chunk of logit rows
    into ``softmax - onehot`` in place (the gradient of the CE with respect to the logits) and the backward pass only
    scales it by the incoming per-row gradient and runs the head's two matrix products. Same products and dtypes as
    ``F.linear`` under autocast followed by ``F.cross_entropy`` on ``.float()`` logits; what it saves is the
    elementwise passes over the ``[rows, vocab]`` logits (float copy, log-softmax and its backward, the bf16 cast of
    the gradient) and their memory."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, chunk_rows):
        with torch.autocast(hidden.device.type, enabled=False):
            hidden_c, weight_c = hidden.to(compute_dtype), weight.to(compute_dtype)
            logits = F.linear(hidden_c, weight_c)  # [M, V] in the compute dtype
            rows = logits.shape[0]
            # the CE gradient lives in float32 (as the float logits' gradient of the plain path); with float32
            # logits it overwrites them
            grad = logits if logits.dtype == torch.float32 else torch.empty(rows, logits.shape[1], device=logits.device)
            token_loss = torch.empty(rows, dtype=torch.float32, device=logits.device)
            correct = torch.empty(rows, dtype=torch.bool, device=logits.device)
            for start in range(0, rows, chunk_rows):
                part = slice(start, start + chunk_rows)
                scores, target = logits[part].float(), targets[part, None]  # [c, V], [c, 1]
                correct[part] = scores.argmax(-1) == target[:, 0]
                log_norm = torch.logsumexp(scores, -1, keepdim=True)  # [c, 1]
                token_loss[part] = (log_norm - scores.gather(1, target))[:, 0]
                chunk_grad = grad[part]
                torch.exp(torch.sub(scores, log_norm, out=chunk_grad), out=chunk_grad)  # softmax
                chunk_grad.scatter_add_(1, target, chunk_grad.new_full(target.shape, -1.0))  # - onehot
        ctx.save_for_backward(hidden_c, weight_c, grad)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.used = False
        ctx.mark_non_differentiable(correct)
        return token_loss, correct

    @staticmethod
    def backward(ctx, grad_token_loss, grad_correct):
        if ctx.used:
            raise RuntimeError("the fused head cross-entropy scales its saved gradient in place: backward runs once")
        ctx.used = True
        hidden_c, weight_c, grad = ctx.saved_tensors
        with torch.autocast(hidden_c.device.type, enabled=False):
            grad_logits = grad.mul_(grad_token_loss[:, None]).to(hidden_c.dtype)  # [M, V]
            grad_hidden = grad_weight = None
            if ctx.needs_input_grad[0]:
                grad_hidden = (grad_logits @ weight_c).to(ctx.dtypes[0])
            if ctx.needs_input_grad[1]:
                grad_weight = (grad_logits.t() @ hidden_c).to(ctx.dtypes[1])
        return grad_hidden, grad_weight, None, None, None


def prologue_ar_loss_from_hidden(
    hidden_states: torch.Tensor,
    head_weight: torch.Tensor,
    input_ids: torch.Tensor,
    vocabulary: PrologueVocabulary,
    segment_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    chunk_rows: int = 64,
) -> PrologueARLossOutput:
    """:func:`prologue_ar_loss` of ``logits = hidden_states @ head_weight.T`` (a bias-free LM head), computed without
    materialising the logits: the head runs on the predicting positions only (not the last one) and the
    cross-entropy is fused with it (:class:`_HeadCrossEntropy`). The same loss, per-token CE, top-1 hits and segment
    statistics as the plain path within float rounding, and the same gradients for ``hidden_states`` and
    ``head_weight``; under autocast the head's products run in the autocast dtype as ``F.linear`` would.

    Args:
        hidden_states: ``[B, 1 + K + 1 + N, hidden]``, the decoder's final (normed) hidden states.
        head_weight: ``[vocab, hidden]``, the LM head's weight.
        input_ids, vocabulary, segment_weights: as :func:`prologue_ar_loss`.
        chunk_rows: logit rows turned into CE gradients at a time (memory of the float32 work buffer).

    ``backward`` may run once through the result (the saved gradient is scaled in place). No logits are returned.
    """
    length = vocabulary.sequence_length
    if input_ids.ndim != 2 or input_ids.shape[1] != length:
        raise ValueError(f"input_ids must have shape [B, {length}], got {list(input_ids.shape)}")
    if hidden_states.ndim != 3 or hidden_states.shape[:2] != input_ids.shape:
        raise ValueError(f"hidden_states must have shape [B, {length}, hidden], got {list(hidden_states.shape)}")
    if head_weight.ndim != 2 or head_weight.shape[1] != hidden_states.shape[-1]:
        raise ValueError(
            f"head_weight must have shape [vocab, {hidden_states.shape[-1]}], got {list(head_weight.shape)}"
        )
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    device_type = hidden_states.device.type
    if torch.is_autocast_enabled(device_type) and torch.is_floating_point(hidden_states):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = torch.promote_types(hidden_states.dtype, head_weight.dtype)
    targets = input_ids[:, 1:]  # [B, T]
    hidden = hidden_states[:, :-1].reshape(-1, hidden_states.shape[-1])  # [B * T, hidden]
    token_loss, correct = _HeadCrossEntropy.apply(hidden, head_weight, targets.reshape(-1), compute_dtype, chunk_rows)
    return _segment_weighted_loss(
        token_loss.view_as(targets), correct.view_as(targets), targets, vocabulary, segment_weights
    )


def causal_lm_prologue_ar_loss(
    ar: nn.Module,
    sequence: torch.Tensor,
    vocabulary: PrologueVocabulary,
    segment_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    inputs_embeds: torch.Tensor | None = None,
    num_columns: int | None = None,
    keep_logits: bool = False,
) -> tuple[PrologueARLossOutput, torch.Tensor | None]:
    """:func:`prologue_ar_loss` of a :class:`~prologue_hf.PrologueARForCausalLM` run on ``sequence``, the one place
    that picks between the fused and the plain head: a bias-free head runs fused with the cross-entropy
    (:func:`prologue_ar_loss_from_hidden` on the decoder stack's hidden states), a head with a bias through
    ``ar(...).logits``.

    Args:
        ar: the (unwrapped) AR model (``.model`` the decoder stack, ``.lm_head`` the head).
        sequence: ``[B, 1 + K + 1 + N]`` ids, the targets; also the input unless ``inputs_embeds`` is given.
        vocabulary, segment_weights: as :func:`prologue_ar_loss`.
        inputs_embeds: ``[B, L, hidden]``, fed instead of ``sequence`` (e.g. soft prologue embeddings).
        num_columns: score the first ``num_columns`` head rows only (the official compact AR's ``V + P + 1``: its
            logits have no class ids); ``None`` = the whole vocabulary.
        keep_logits: also return the fused path's logits (an extra no-grad head product).

    Returns ``(loss output, logits [B, L, columns])``; the logits are ``None`` on the fused path without
    ``keep_logits``.
    """
    inputs = {"input_ids": sequence} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
    columns = slice(None) if num_columns is None else slice(0, num_columns)
    if ar.lm_head.bias is None:
        hidden = ar.model(**inputs, use_cache=False).last_hidden_state
        weight = ar.lm_head.weight if num_columns is None else ar.lm_head.weight[columns]
        out = prologue_ar_loss_from_hidden(hidden, weight, sequence, vocabulary, segment_weights)
        logits = None
        if keep_logits:
            with torch.no_grad():
                logits = ar.lm_head(hidden)[..., columns]
        return out, logits
    logits = ar(**inputs, use_cache=False).logits[..., columns]
    return prologue_ar_loss(logits, sequence, vocabulary, segment_weights), logits


# ============================================================================================ routed AR loss
def prepare_class_labels(labels: torch.Tensor | None, batch_size: int, num_classes: int, drop_prob: float, device) -> torch.Tensor:
    """Labels for the compact AR's class token: ``[B]`` in ``[0, C]`` where ``C`` is the null class.

    ``None`` / negative labels (unlabelled) and, with probability ``drop_prob`` per sample, real labels become ``C``.
    """
    null = torch.full((batch_size,), num_classes, dtype=torch.long, device=device)
    if labels is None or drop_prob >= 1.0:
        return null
    labels = labels.to(device=device, dtype=torch.long)
    labels = torch.where(labels < 0, null, labels)
    if drop_prob > 0:
        labels = torch.where(torch.rand(batch_size, device=device) < drop_prob, null, labels)
    return labels


@dataclass
class RoutedARLossOutput(ModelOutput):
    """Output of :func:`routed_ar_loss`.

    Attributes:
        loss: scalar mean CE over the ``T = K + 1 + N`` predicted positions.
        token_losses: ``[B, T]`` per-position CE.
        logits: ``[B, 1 + T, vocab]`` AR logits (position ``t`` predicts ``targets[:, t + 1]``).
        targets: ``[B, 1 + T]`` the discrete sequence ``[class][prologue][EOS][visual]``.
        inputs_embeds: ``[B, 1 + T, hidden]`` what the AR read.
        drop_visual: ``[B]`` bool, samples whose visual inputs were replaced by EOS (None without dropout).
        metrics: detached scalars: ``ar_ce_prologue``, ``ar_ce_eos``, ``ar_ce_visual``, ``ar_acc_*``.
    """

    loss: torch.Tensor | None = None
    token_losses: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    inputs_embeds: torch.Tensor | None = None
    drop_visual: torch.Tensor | None = None
    metrics: dict | None = None


def routed_ar_loss(
    compact_ar: PrologueARForCausalLM,
    encoded: PrologueTokenizerEncoderOutput,
    class_labels: torch.Tensor,
    target: str = "prologue",
    visual_dropout: float = 0.5,
    prologue_target_gradient: bool = False,
    visual_soft_temperature: float = 1.0,
    drop_visual: torch.Tensor | None = None,
) -> RoutedARLossOutput:
    """Compact-AR cross-entropy with the gradient routed by ``target`` (see the module docstring): this builds what
    the AR reads; the cross-entropy itself is :func:`prologue_ar_loss`.

    Args:
        compact_ar: the jointly trained AR; its vocabulary must match the tokenizer.
        encoded: the tokenizer's encoder output (ids, Prob-STE ``prologue_soft_onehot``, cosine ``visual_logits``).
        class_labels: ``[B]`` in ``[0, C]`` (``C`` = null class), see :func:`prepare_class_labels`.
        target: ``"prologue"`` or ``"visual"``.
        visual_dropout: per-sample probability of replacing all visual inputs by EOS (``"prologue"`` only).
        prologue_target_gradient: soft prologue targets (gradient of ``log p(z_p)`` through the targets).
        visual_soft_temperature: ``tau_v`` of the visual straight-through one-hot (``"visual"`` only).
        drop_visual: ``[B]`` bool mask to use instead of sampling one (tests, analysis).
    """
    vocab = compact_ar.vocabulary
    visual_ids = encoded.visual_ids
    batch = visual_ids.shape[0]
    if target == "prologue":
        if encoded.prologue_soft_onehot is None:
            raise ValueError("target='prologue' needs a tokenizer with prologue tokens (num_prologue_tokens > 0)")
        if drop_visual is None and visual_dropout > 0:
            drop_visual = torch.rand(batch, device=visual_ids.device) < visual_dropout
        inputs_embeds = compact_ar.embed_sequence(
            class_labels, visual_ids=visual_ids, prologue_soft_onehot=encoded.prologue_soft_onehot, drop_visual=drop_visual
        )
        targets = vocab.build_sequence(class_labels, visual_ids, encoded.prologue_ids)
    elif target == "visual":
        if vocab.has_prologue:
            raise ValueError("target='visual' is the K=0 AR-regularisation baseline; this vocabulary has prologue tokens")
        if drop_visual is not None:
            raise ValueError("drop_visual needs an EOS token, i.e. target='prologue'")
        soft = straight_through_onehot(encoded.visual_logits, visual_soft_temperature)
        inputs_embeds = compact_ar.embed_sequence(class_labels, visual_soft_onehot=soft)
        targets = vocab.build_sequence(class_labels, visual_ids)
    else:
        raise ValueError(f"target must be 'prologue' or 'visual', got {target!r}")

    logits = compact_ar(inputs_embeds=inputs_embeds).logits  # [B, 1 + T, vocab]
    soft_targets = encoded.prologue_soft_onehot if prologue_target_gradient and target == "prologue" else None
    ce = prologue_ar_loss(logits, targets, vocab, soft_prologue_targets=soft_targets)
    metrics = {}
    for (ce_sum, correct, count), name in zip(ce.segment_stats, SEGMENTS):
        if count > 0:
            metrics[f"ar_ce_{name}"] = ce_sum / count
            metrics[f"ar_acc_{name}"] = correct / count
    if drop_visual is not None:
        metrics["ar_visual_dropped_fraction"] = drop_visual.float().mean()
    return RoutedARLossOutput(
        loss=ce.loss,
        token_losses=ce.token_loss,
        logits=logits,
        targets=targets,
        inputs_embeds=inputs_embeds,
        drop_visual=drop_visual,
        metrics=metrics,
    )


__all__ = [
    "PrologueStage1LossConfig",
    "PrologueARLossOutput",
    "RoutedARLossOutput",
    "prologue_ar_loss",
    "prologue_ar_loss_from_hidden",
    "causal_lm_prologue_ar_loss",
    "routed_ar_loss",
    "prepare_class_labels",
    "discriminator_loss",
    "generator_adversarial_loss",
    "lecam_regularizer",
    "adaptive_gan_weight",
    "build_perceptual_loss",
    "LPIPSVGGLoss",
    "ConvNeXtPerceptualLoss",
    "PerceptualWeightsUnavailableError",
    "PERCEPTUAL_LOSSES",
    "GAN_LOSSES",
    "AR_TARGETS",
]
