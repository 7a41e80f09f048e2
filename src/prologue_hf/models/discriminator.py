"""PatchGAN discriminator for stage-1 tokenizer training (paper section 2: "adversarial losses [Isola et al. 2017]").

Which one: the pix2pix "NLayer" PatchGAN of Isola et al. (CVPR 2017), the discriminator the official Prologue config
selects (``GANLoss: disc_type: patchgan, disc_num_layers: 3, disc_dim: 64, norm_type: bn``)::

    Conv4x4/2(C -> d) - LeakyReLU(0.2)
    [Conv4x4/2(d*m_{i-1} -> d*m_i, no bias) - Norm - LeakyReLU(0.2)]  for i = 1 .. num_layers-1, m_i = min(2^i, 8)
    Conv4x4/1(d*m -> d*min(2^L, 8), no bias) - Norm - LeakyReLU(0.2)
    Conv4x4/1(-> 1)                                                  => per-patch real/fake logits [B, 1, h, w]

Init as pix2pix: conv weights ~ N(0, 0.02), norm scales ~ N(1, 0.02), biases 0. The model also keeps the two
LeCam-EMA statistics (official ``LeCAM_EMA``: EMA of the mean real / fake logits, decay 0.999) as persistent buffers,
so that a checkpoint of the discriminator is the complete adversarial state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput, logging

from .remote_code import RemoteCodeConfigMixin
from .strict_loading import StrictLoadingMixin

logger = logging.get_logger(__name__)

NORM_TYPES = ("batch", "group", "none")


@strict
class PrologueDiscriminatorConfig(RemoteCodeConfigMixin, PreTrainedConfig):
    r"""Configuration of :class:`PrologueDiscriminator` (official ``GANLoss`` defaults).

    Args:
        num_channels: image channels.
        hidden_size: width ``d`` of the first conv (official ``disc_dim`` 64).
        num_layers: stride-2 convs (official ``disc_num_layers`` 3); inputs must be at least ``3 * 2**num_layers``
            pixels on each side.
        norm_type: ``"batch"`` (official ``bn``), ``"group"`` (32 groups or fewer) or ``"none"``.
        lecam_ema_decay: decay of the LeCam logit EMAs (official 0.999).
    """

    model_type = "prologue_discriminator"

    num_channels: int = 3
    hidden_size: int = 64
    num_layers: int = 3
    norm_type: str = "batch"
    lecam_ema_decay: float = 0.999
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"norm_type must be one of {NORM_TYPES}, got {self.norm_type!r}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.hidden_size < 1 or self.num_channels < 1:
            raise ValueError(f"hidden_size and num_channels must be >= 1, got {self.hidden_size}, {self.num_channels}")
        if not 0.0 <= self.lecam_ema_decay < 1.0:
            raise ValueError(f"lecam_ema_decay must lie in [0, 1), got {self.lecam_ema_decay}")
        super().__post_init__(**kwargs)

    @property
    def min_image_size(self) -> int:
        """Smallest input side that leaves at least one output patch."""
        return 3 * 2**self.num_layers


@dataclass
class PrologueDiscriminatorOutput(ModelOutput):
    """Output of :class:`PrologueDiscriminator`.

    Attributes:
        logits: ``[B, 1, h, w]`` real/fake logit of each image patch (``h = H / 2**num_layers - 2``).
    """

    logits: torch.Tensor | None = None


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    return nn.Identity()


class PrologueDiscriminatorPreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    config_class = PrologueDiscriminatorConfig
    _strict_loading_fields = ("num_layers",)
    config: PrologueDiscriminatorConfig
    base_model_prefix = "discriminator"
    main_input_name = "pixel_values"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(module.weight, 1.0, std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, PrologueDiscriminator):
            module.lecam_real_ema.zero_()
            module.lecam_fake_ema.zero_()


class PrologueDiscriminator(PrologueDiscriminatorPreTrainedModel):
    """PatchGAN discriminator (pix2pix NLayer) with LeCam EMA buffers.

    >>> from prologue_hf.models.discriminator import PrologueDiscriminator, PrologueDiscriminatorConfig
    >>> disc = PrologueDiscriminator(PrologueDiscriminatorConfig(hidden_size=16))
    >>> disc(torch.zeros(2, 3, 32, 32)).logits.shape
    torch.Size([2, 1, 2, 2])
    """

    def __init__(self, config: PrologueDiscriminatorConfig):
        super().__init__(config)
        d, norm = config.hidden_size, config.norm_type
        layers: list[nn.Module] = [nn.Conv2d(config.num_channels, d, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for i in range(1, config.num_layers):
            prev, mult = mult, min(2**i, 8)
            # no conv bias before a normalisation with its own shift (pix2pix); keep it when there is none
            layers += [nn.Conv2d(d * prev, d * mult, 4, 2, 1, bias=norm == "none"), _norm(norm, d * mult), nn.LeakyReLU(0.2)]
        prev, mult = mult, min(2**config.num_layers, 8)
        layers += [nn.Conv2d(d * prev, d * mult, 4, 1, 1, bias=norm == "none"), _norm(norm, d * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(d * mult, 1, 4, 1, 1))
        self.layers = nn.Sequential(*layers)
        self.register_buffer("lecam_real_ema", torch.zeros(()))
        self.register_buffer("lecam_fake_ema", torch.zeros(()))
        self.post_init()

    def forward(self, pixel_values: torch.Tensor) -> PrologueDiscriminatorOutput:
        """``pixel_values`` ``[B, C, H, W]`` in ``[-1, 1]`` -> patch ``logits`` ``[B, 1, h, w]``."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must have shape [B, {self.config.num_channels}, H, W], got {list(pixel_values.shape)}"
            )
        if min(pixel_values.shape[-2:]) < self.config.min_image_size:
            raise ValueError(
                f"images must be at least {self.config.min_image_size}px per side for num_layers="
                f"{self.config.num_layers}, got {list(pixel_values.shape[-2:])}"
            )
        weight = self.layers[0].weight
        return PrologueDiscriminatorOutput(logits=self.layers(pixel_values.to(weight.dtype)))

    @torch.no_grad()
    def update_lecam_ema(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> None:
        """``ema <- decay * ema + (1 - decay) * mean(logits)`` for the real and the fake logits (official LeCAM_EMA)."""
        rate = 1.0 - self.config.lecam_ema_decay
        self.lecam_real_ema.lerp_(real_logits.detach().float().mean(), rate)
        self.lecam_fake_ema.lerp_(fake_logits.detach().float().mean(), rate)


__all__ = [
    "PrologueDiscriminator",
    "PrologueDiscriminatorConfig",
    "PrologueDiscriminatorOutput",
    "PrologueDiscriminatorPreTrainedModel",
]
