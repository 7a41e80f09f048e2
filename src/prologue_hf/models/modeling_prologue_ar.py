"""PrologueARForCausalLM: a LlamaForCausalLM over Prologue's combined vocabulary.

With default settings this *is* Llama (same modules, same state-dict keys; ``save_pretrained`` output loads in
``transformers.LlamaForCausalLM``). Three options, off by default, reproduce the official Prologue AR:

* ``use_qk_norm``: per-head RMSNorm on q and k before RoPE;
* ``rope_axes_dim``: the official multi-axis RoPE, where only the first ``rope_axes_dim[0]`` channels rotate (the
  converter permutes q/k channels from the official adjacent-pair layout to Llama's half-split layout);
* ``embedding_dropout`` / ``hidden_dropout``: the paper's stage-2 dropouts (0.1 each).

GEGLU is Llama's MLP with ``hidden_act="gelu_pytorch_tanh"`` (the default here).

The norm (:class:`PrologueARRMSNorm`) and the RoPE (:func:`apply_rotary`) compute Llama's values and gradients bit for
bit with fewer small ops, which is what a token-at-a-time decode step on CPU pays for (docs/sampling.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaForCausalLM, LlamaModel
from transformers.cache_utils import Cache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    eager_attention_forward,
)
from transformers.utils import logging

from ..vocabulary import PrologueVocabulary
from .configuration_prologue_ar import PrologueARConfig
from .strict_loading import StrictLoadingMixin

logger = logging.get_logger(__name__)


class PrologueARRotaryEmbedding(LlamaRotaryEmbedding):
    """Llama RoPE, or with ``rope_axes_dim`` the official one-axis-of-three layout (other frequencies are 0)."""

    @staticmethod
    def compute_default_rope_parameters(config: PrologueARConfig, **kwargs) -> tuple[torch.Tensor, float]:
        if getattr(config, "rope_axes_dim", None) is None:
            return LlamaRotaryEmbedding.compute_default_rope_parameters(config, **kwargs)
        base = config.rope_parameters["rope_theta"]
        head_dim = config.head_dim
        axis_dim = config.rope_axes_dim[0]
        inv_freq = torch.zeros(head_dim // 2, dtype=torch.float)
        inv_freq[: axis_dim // 2] = 1.0 / (base ** (torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim)).float()
        return inv_freq, 1.0

    def forward(self, x: torch.Tensor, position_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, signed_sin)``, each ``[B, 1, L, head_dim]`` in ``x``'s dtype, for :func:`apply_rotary`: Llama's
        cos / sin with the head axis added and the first half of sin negated, done once per forward instead of in
        every layer."""
        cos, sin = super().forward(x, position_ids)  # [B, L, head_dim]
        half = sin.shape[-1] // 2
        signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        return cos[:, None], signed_sin[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Llama's RoPE (half-split layout) of ``x`` ``[B, heads, L, head_dim]``: ``x * cos + rotate_half(x) * sin``.

    ``rotate_half(x) * sin`` is ``[-x2, x1] * [s1, s2]``, which is ``roll(x, half) * [-s1, s2]`` exactly (negation is
    exact), so with the sign folded into the sine once per forward (:class:`PrologueARRotaryEmbedding`) a rotation
    costs four ops instead of seven; the values and gradients are bit-identical to
    ``transformers``' ``apply_rotary_pos_emb`` (tested). Few ops matter when decoding a token at a time, where each
    op works on a few rows.
    """
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


class PrologueARRMSNorm(LlamaRMSNorm):
    """:class:`LlamaRMSNorm` (same parameter, same values) computed by ``F.rms_norm`` on CPU.

    On CPU ``F.rms_norm`` runs Llama's ops (square, mean, add eps, rsqrt, multiply, in float32 for a half-precision
    input, rounded once at the end) inside one call, so forward and gradients are bit-identical (tested): one op
    instead of six for float32 (the weight multiply goes inside too), two instead of eight for bfloat16 / float16
    (the weight multiply stays outside, after the rounding, as in Llama). Few ops matter when decoding a token at a
    time. Other devices and dtypes keep Llama's form: CUDA's fused kernel reduces in another order, and training
    numerics there stay exactly Llama's.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.device.type == "cpu":
            if hidden_states.dtype == self.weight.dtype == torch.float32:
                return F.rms_norm(hidden_states, self.weight.shape, self.weight, self.variance_epsilon)
            if hidden_states.dtype in (torch.bfloat16, torch.float16):
                return self.weight * F.rms_norm(hidden_states, self.weight.shape, eps=self.variance_epsilon)
        return super().forward(hidden_states)


class PrologueARAttention(LlamaAttention):
    """Llama attention with optional per-head q/k RMSNorm (applied before RoPE, as the official AR).

    ``position_embeddings`` are :class:`PrologueARRotaryEmbedding`'s ``(cos, signed_sin)``.
    """

    def __init__(self, config: PrologueARConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.use_qk_norm = bool(config.use_qk_norm)
        if self.use_qk_norm:
            self.q_norm = PrologueARRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = PrologueARRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape)
        key_states = self.k_proj(hidden_states).view(hidden_shape)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if self.use_qk_norm:  # checked here, not by calling nn.Identity: a module call per layer saved when decoding
            query_states, key_states = self.q_norm(query_states), self.k_norm(key_states)

        cos, signed_sin = position_embeddings
        query_states = apply_rotary(query_states.transpose(1, 2), cos, signed_sin)
        key_states = apply_rotary(key_states.transpose(1, 2), cos, signed_sin)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = self.o_proj(attn_output.reshape(*input_shape, -1).contiguous())
        return attn_output, attn_weights


class PrologueARDecoderLayer(LlamaDecoderLayer):
    """Llama decoder layer with :class:`PrologueARAttention` and optional residual-branch dropout."""

    def __init__(self, config: PrologueARConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.self_attn = PrologueARAttention(config, layer_idx)
        self.input_layernorm = PrologueARRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = PrologueARRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.hidden_dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_out, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        if self.training:  # dropout is the identity in eval mode; not calling it saves two module calls per layer
            attn_out = self.hidden_dropout(attn_out)
        hidden_states = hidden_states + attn_out
        mlp_out = self.mlp(self.post_attention_layernorm(hidden_states))
        if self.training:
            mlp_out = self.hidden_dropout(mlp_out)
        return hidden_states + mlp_out


class PrologueARPreTrainedModel(StrictLoadingMixin, LlamaPreTrainedModel):
    config_class = PrologueARConfig
    config: PrologueARConfig
    # a base PrologueARModel read from a PrologueARForCausalLM folder drops the head on purpose
    _strict_loading_ignored_unexpected = (r"lm_head\..*",)
    _no_split_modules = ["PrologueARDecoderLayer"]
    _can_record_outputs = {"hidden_states": PrologueARDecoderLayer, "attentions": PrologueARAttention}


def check_ids_in_range(input_ids: torch.Tensor, vocab_size: int, synchronize: bool = True) -> None:
    """Raise if an id of ``input_ids`` lies outside ``[0, vocab_size)``.

    ``synchronize=True`` reads the extremes on the host and raises a ``ValueError`` that names them (free on CPU).
    On an accelerator that read would stall every forward until the device catches up, so the model passes
    ``synchronize=False`` there: a device-side assertion (``torch._assert_async``) with the same message, reported
    by the next synchronising call instead of an opaque index error from the embedding kernel.
    """
    if not input_ids.numel():
        return
    message = f"input_ids must lie in [0, {vocab_size}) (the combined vocabulary)"
    if not synchronize:
        torch._assert_async(((input_ids >= 0) & (input_ids < vocab_size)).all(), message)
        return
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{message}; got values in [{low}, {high}]")


class PrologueARModel(PrologueARPreTrainedModel, LlamaModel):
    """The decoder stack (a :class:`transformers.LlamaModel` with Prologue's options)."""

    def __init__(self, config: PrologueARConfig):
        PrologueARPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(PrologueARDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = PrologueARRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = PrologueARRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, input_ids: torch.LongTensor | None = None, inputs_embeds: torch.Tensor | None = None, **kwargs):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            check_ids_in_range(input_ids, self.vocab_size, synchronize=input_ids.device.type == "cpu")
            inputs_embeds = self.embed_tokens(input_ids)
        if self.training:
            inputs_embeds = self.embedding_dropout(inputs_embeds)
        return LlamaModel.forward(self, inputs_embeds=inputs_embeds, **kwargs)


class PrologueARForCausalLM(PrologueARPreTrainedModel, LlamaForCausalLM):
    """Class-conditional AR over ``[class][prologue][EOS][visual]``.

    Position ``t`` of the logits predicts token ``t + 1``; pass ``labels=input_ids`` for the usual shifted CE.

    >>> from prologue_hf import PrologueARConfig, PrologueARForCausalLM
    >>> config = PrologueARConfig(visual_vocab_size=64, prologue_vocab_size=16, num_prologue_tokens=4,
    ...     num_visual_tokens=16, num_classes=10, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    >>> model = PrologueARForCausalLM(config)
    >>> ids = config.vocabulary.build_sequence([3], torch.zeros(1, 16, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    >>> model(ids).logits.shape
    torch.Size([1, 22, 92])
    """

    def __init__(self, config: PrologueARConfig):
        PrologueARPreTrainedModel.__init__(self, config)
        self.model = PrologueARModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        # saved as generation_config.json: `generate()` then samples one whole sequence after the class token (the
        # Prologue EOS sits mid-sequence, so it must not stop generation), without transformers' top-k default
        if self.generation_config is not None:
            self.generation_config.update(
                max_new_tokens=config.vocabulary.num_generated_tokens, do_sample=True, top_k=0, top_p=1.0,
                temperature=1.0, eos_token_id=None,
            )
            self.generation_config._from_model_config = False

    def generate(self, *args, **kwargs):
        """:meth:`transformers.GenerationMixin.generate`, refusing ``guidance_scale`` without
        ``negative_prompt_ids``: transformers would then take the prompt's last token (the class token itself) as
        the unconditional prompt and the guidance would do nothing. Prologue's unconditional prompt is the null
        class token, ``negative_prompt_ids = torch.full_like(input_ids, vocabulary.null_class_id)`` (docs/sampling.md).
        """
        config = kwargs.get("generation_config") or self.generation_config
        scale = kwargs.get("guidance_scale", getattr(config, "guidance_scale", None))
        if scale is not None and scale != 1 and kwargs.get("negative_prompt_ids") is None:
            raise ValueError(
                f"guidance_scale={scale} needs negative_prompt_ids: pass the null class token "
                f"(negative_prompt_ids=torch.full_like(input_ids, {self.vocabulary.null_class_id})), else "
                "transformers guides against the class token itself and nothing changes"
            )
        negative = kwargs.get("negative_prompt_ids")
        if negative is not None and scale not in (None, 1):
            null = self.vocabulary.null_class_id
            if not bool((torch.as_tensor(negative)[:, :1] == null).all()):
                logger.warning(
                    f"negative_prompt_ids do not start with the null class token {null}: Prologue's classifier-free "
                    "guidance mixes with the null class (docs/sampling.md)"
                )
        return super().generate(*args, **kwargs)

    @property
    def vocabulary(self) -> PrologueVocabulary:
        return self.config.vocabulary

    def embed_sequence(
        self,
        class_labels: torch.Tensor,
        visual_ids: torch.Tensor | None = None,
        prologue_soft_onehot: torch.Tensor | None = None,
        prologue_ids: torch.Tensor | None = None,
        visual_soft_onehot: torch.Tensor | None = None,
        drop_visual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Input embeddings ``[B, 1 + K + 1 + N, hidden]`` of ``[class][prologue][EOS][visual]``.

        Prologue positions are ``p~ @ W_emb[prologue rows]`` when ``prologue_soft_onehot`` ``[B, K, P]`` is given
        (Prob-STE: forward value is the hard embedding, gradient reaches ``p~``), else a lookup of
        ``prologue_ids`` ``[B, K]``. Visual positions likewise take ``visual_soft_onehot`` ``[B, N, V]`` (the
        "AR regularisation on visual tokens" baseline) or ``visual_ids`` ``[B, N]``. ``drop_visual`` ``[B]`` bool
        replaces every visual *input* of the marked samples by EOS (paper's visual-token dropout).
        """
        vocab = self.vocabulary
        weight = self.get_input_embeddings().weight
        class_emb = weight[vocab.class_token_ids(class_labels).to(weight.device)][:, None]  # [B, 1, D]
        parts = [class_emb]
        if vocab.has_prologue:
            prologue_rows = weight[vocab.prologue_id_slice]
            if prologue_soft_onehot is not None:
                parts.append(prologue_soft_onehot.to(weight.dtype) @ prologue_rows)
            elif prologue_ids is not None:
                vocab.check_prologue_ids(prologue_ids)
                parts.append(prologue_rows[prologue_ids])
            else:
                raise ValueError("prologue_soft_onehot or prologue_ids is required when num_prologue_tokens > 0")
            parts.append(weight[vocab.eos_token_id].expand(class_emb.shape[0], 1, -1))
        visual_rows = weight[vocab.visual_id_slice]
        if visual_soft_onehot is not None:
            visual_emb = visual_soft_onehot.to(weight.dtype) @ visual_rows
        elif visual_ids is not None:
            vocab.check_visual_ids(visual_ids)
            visual_emb = visual_rows[visual_ids]
        else:
            raise ValueError("visual_ids or visual_soft_onehot is required")
        if drop_visual is not None:
            if not vocab.has_prologue:
                raise ValueError("drop_visual needs an EOS token, i.e. num_prologue_tokens > 0")
            eos = weight[vocab.eos_token_id]
            visual_emb = torch.where(drop_visual.to(weight.device)[:, None, None], eos.expand_as(visual_emb), visual_emb)
        parts.append(visual_emb)
        return torch.cat(parts, dim=1)


__all__ = [
    "PrologueARForCausalLM",
    "PrologueARModel",
    "PrologueARPreTrainedModel",
    "PrologueARAttention",
    "PrologueARDecoderLayer",
    "PrologueARRMSNorm",
    "PrologueARRotaryEmbedding",
    "apply_rotary",
]
