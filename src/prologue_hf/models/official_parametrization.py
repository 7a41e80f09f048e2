"""The official training parameterisation of the residual gates and norm scales, on our own modules.

The official Prologue code computes every residual gate and every AdaRMSNorm scale of a Transformer from one learned
conditioning vector ``c = cond_proj(null label)``: ``gate = W c + b`` and ``scale = 1 + A c + a``. At inference the
label is a constant, so the converter folds each of them into a plain vector (:mod:`prologue_hf.conversion.official`).
For *training* the two forms are not the same: AdamW moves ``W``, ``b`` and ``c`` separately, and a gate made of
``dim x cond_dim + dim`` parameters driven by a ~unit-norm ``c`` grows far faster than one plain vector
(issue 15: |g| 0.28 vs 0.010 after 100 steps). This module re-creates the official parameters on
:class:`~prologue_hf.PrologueTokenizerModel`, the prologue encoder of :class:`~prologue_hf.ProloguePostModel` and
:class:`~prologue_hf.PrologueARForCausalLM` with ``torch.nn.utils.parametrize``: the model classes stay the same, each folded tensor becomes a function of the official
tensors, and :func:`fold_official_parametrization` turns the trained model back into a plain one (the form
``save_pretrained`` and the pipelines use).

Where each official tensor lives is recorded in an :class:`OfficialParameterMap` (official name -> our tensors and
the layout change between them), which is what the parity check and the official AdamW groups read.

Mapping (ours <- official), per Transformer with condition ``c`` (:class:`NullCondition`, = ``cond_proj``):

* tokenizer ``layers.i.norm1.weight`` / ``norm2.weight`` <- ``1 + adaln_{1,mlp}.affine(c)``;
  ``gate_attn`` / ``gate_mlp`` <- ``gate1(c)`` / ``gate_mlp(c)``; ``attn.{q,k}_norm.weight`` <- ``1 + w``;
  decoder ``norm.weight`` <- ``1 + out_norm.affine(c)``;
* AR ``input_layernorm`` / ``post_attention_layernorm`` / ``model.norm`` weights <- ``1 + affine(c)``;
  ``o_proj.weight`` <- ``diag(gate1(c)) proj.weight``, ``down_proj.weight`` <- ``diag(gate_mlp(c)) fc2.weight``;
  q/k norms <- ``1 + w`` (in Llama's channel order, see the converter).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .modeling_prologue_ar import PrologueARForCausalLM
from .modeling_prologue_post import ProloguePostModel
from .modeling_prologue_tokenizer import PrologueTokenizerModel

# The official init of every gate and AdaRMSNorm affine (models.py ``init_weight=1e-5``) and of a Linear (trunc N(0, 0.02)).
OFFICIAL_GATE_INIT_SCALE = 1e-5
OFFICIAL_LINEAR_INIT_STD = 0.02


class NullCondition(nn.Module):
    """The official ``cond_proj`` at a constant label: ``c = GELU_tanh(normalize(W y + b) * sqrt(d) * (1 + w))``.

    ``proj`` is ``cond_proj.0`` (``[cond_dim, num_labels]`` + bias), ``scale`` is ``cond_proj.1.weight`` (``w``), and
    ``labels`` ``[num_labels]`` the constant label (the null one-hot, or the AR's ``uncond_ar_labels``).
    Returns ``c`` ``[cond_dim]`` float32.
    """

    def __init__(self, num_labels: int, cond_dim: int, labels: torch.Tensor | None = None):
        super().__init__()
        self.proj = nn.Linear(num_labels, cond_dim)
        self.scale = nn.Parameter(torch.zeros(cond_dim))
        if labels is None:
            labels = F.one_hot(torch.tensor(num_labels - 1), num_labels).float()
        self.register_buffer("labels", labels.reshape(num_labels).float().clone(), persistent=False)

    def forward(self) -> torch.Tensor:
        h = self.proj(self.labels.to(self.proj.weight.dtype)).float()
        h = F.normalize(h, dim=-1) * math.sqrt(h.shape[-1]) * (1.0 + self.scale.float())
        return F.gelu(h, approximate="tanh")


class ConditionedVector(nn.Module):
    """Parametrization ``bias -> offset + W c + bias``: a gate (``offset=0``) or a norm scale (``offset=1``).

    The parametrized tensor's stored ``original`` is the official bias ``[dim]``; ``weight`` ``[dim, cond_dim]``.
    """

    def __init__(self, condition: NullCondition, dim: int, offset: float):
        super().__init__()
        self.condition = condition
        self.weight = nn.Parameter(torch.zeros(dim, condition.proj.out_features))
        self.offset = offset

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        return (self.offset + F.linear(self.condition(), self.weight.float(), bias.float())).to(bias.dtype)


class ConditionedRowScale(nn.Module):
    """Parametrization ``W -> diag(G c) W``: an official residual gate (no bias, as in the AR) folded into the rows of
    the branch's output projection. ``original`` is the official projection ``[dim, in]``; ``weight`` is ``G``."""

    def __init__(self, condition: NullCondition, dim: int):
        super().__init__()
        self.condition = condition
        self.weight = nn.Parameter(torch.zeros(dim, condition.proj.out_features))

    def forward(self, projection: torch.Tensor) -> torch.Tensor:
        gate = F.linear(self.condition(), self.weight.float())  # [dim]
        return (gate[:, None] * projection.float()).to(projection.dtype)


class UnitOffset(nn.Module):
    """Parametrization ``w -> 1 + w``: the official q/k ``AdaRMSNorm`` stores ``w`` around 0, we use ``1 + w``."""

    def forward(self, offset: torch.Tensor) -> torch.Tensor:
        return 1.0 + offset


# ------------------------------------------------------------------------------------------- official name -> ours
@dataclass
class _Slot:
    """One official tensor as a piece of our tensors: ``read(ours) -> official`` and ``write(official) -> ours``."""

    tensors: list[Callable[[], torch.Tensor]]  # our parameters (getters, so the map never holds stale objects)
    to_official: Callable[[list[torch.Tensor]], torch.Tensor]
    from_official: Callable[[torch.Tensor], list[torch.Tensor]]


def _identity(getter: Callable[[], torch.Tensor]) -> _Slot:
    return _Slot([getter], lambda ts: ts[0], lambda t: [t])


def _rows(getter: Callable[[], torch.Tensor], start: int, stop: int) -> _Slot:
    def write(t: torch.Tensor) -> list[torch.Tensor]:
        full = getter().detach().clone()
        full[start:stop] = t.to(full.dtype)
        return [full]

    return _Slot([getter], lambda ts: ts[0][start:stop], write)


def _permuted(getter: Callable[[], torch.Tensor], heads: int, perm: torch.Tensor) -> _Slot:
    """Rows permuted inside each head (the AR's q/k channel order); 1-D tensors are one head."""
    inverse = torch.argsort(perm)

    def apply(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        if t.ndim == 1:
            return t[order.to(t.device)]
        return t.reshape(heads, -1, t.shape[-1])[:, order.to(t.device)].reshape(t.shape)

    return _Slot([getter], lambda ts: apply(ts[0], inverse), lambda t: [apply(t, perm)])


def _stacked(*slots: _Slot) -> _Slot:
    """An official tensor that is the row-concatenation of several of ours (``to_kv`` = k | v, ``fc1`` = gate | value)."""
    sizes: list[int] = []

    def read(ts: list[torch.Tensor]) -> torch.Tensor:
        parts, i = [], 0
        for slot in slots:
            n = len(slot.tensors)
            parts.append(slot.to_official(ts[i : i + n]))
            i += n
        return torch.cat(parts)

    def write(t: torch.Tensor) -> list[torch.Tensor]:
        if not sizes:
            sizes.extend(s.tensors[0]().shape[0] for s in slots)
        out: list[torch.Tensor] = []
        for slot, chunk in zip(slots, torch.split(t, sizes)):
            out.extend(slot.from_official(chunk))
        return out

    return _Slot([g for s in slots for g in s.tensors], read, write)


class OfficialParameterMap:
    """Official parameter names of one module (``enc``, ``dec`` or ``ar``), in the official ``named_parameters()``
    order, each with the tensors of ours that hold it.

    ``read(name)`` gives the official tensor from our weights, ``read(name, grad=True)`` its gradient (``None`` when no
    gradient reached it), ``write(name, value)`` sets our weights from an official tensor.
    """

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}

    def add(self, name: str, slot: _Slot) -> None:
        if name in self._slots:
            raise ValueError(f"official parameter {name!r} mapped twice")
        self._slots[name] = slot

    def names(self) -> list[str]:
        return list(self._slots)

    def __contains__(self, name: str) -> bool:
        return name in self._slots

    def parameters(self, name: str) -> list[nn.Parameter]:
        return [g() for g in self._slots[name].tensors]

    def read(self, name: str, grad: bool = False) -> torch.Tensor | None:
        slot = self._slots[name]
        tensors = [g() for g in slot.tensors]
        if grad:
            grads = [t.grad for t in tensors]
            if all(g is None for g in grads):
                return None
            tensors = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]
        return slot.to_official([t.detach() for t in tensors])

    @torch.no_grad()
    def write(self, name: str, value: torch.Tensor) -> None:
        slot = self._slots[name]
        for getter, new in zip(slot.tensors, slot.from_official(value)):
            target = getter()
            if tuple(new.shape) != tuple(target.shape):
                raise ValueError(f"official {name!r}: shape {list(new.shape)} does not fit ours {list(target.shape)}")
            target.copy_(new.to(target.dtype))

    def items(self) -> Iterator[tuple[str, _Slot]]:
        return iter(self._slots.items())


# ------------------------------------------------------------------------------------------------------ tokenizer
def _original(module: nn.Module, name: str) -> Callable[[], torch.Tensor]:
    return lambda: module.parametrizations[name].original


def _parametrization_weight(module: nn.Module, name: str) -> Callable[[], torch.Tensor]:
    return lambda: module.parametrizations[name][0].weight


def _param(module: nn.Module, name: str) -> Callable[[], torch.Tensor]:
    return lambda: getattr(module, name)


def _register(module: nn.Module, name: str, parametrization: nn.Module, original: torch.Tensor) -> None:
    parametrize.register_parametrization(module, name, parametrization, unsafe=True)
    with torch.no_grad():
        module.parametrizations[name].original.copy_(original)


def _condition_slots(out: OfficialParameterMap, prefix: str, condition: NullCondition) -> None:
    out.add(f"{prefix}cond_proj.0.weight", _identity(lambda: condition.proj.weight))
    out.add(f"{prefix}cond_proj.0.bias", _identity(lambda: condition.proj.bias))
    out.add(f"{prefix}cond_proj.1.weight", _identity(lambda: condition.scale))


def _parametrize_vit_stack(
    stack: nn.Module, condition: NullCondition, prefix: str, out: OfficialParameterMap, gate_bias: bool
) -> None:
    """Parametrize the blocks of an encoder/decoder and map the official layer keys (official ``named_parameters``
    order inside a layer)."""
    for i, block in enumerate(stack.layers):
        p = f"{prefix}layers.{i}."
        dim = block.gate_attn.shape[0]
        for ours in ("norm1", "norm2"):
            norm = getattr(block, ours)
            _register(norm, "weight", ConditionedVector(condition, dim, 1.0), torch.zeros(dim))
        for ours_norm in ("q_norm", "k_norm"):
            norm = getattr(block.attn, ours_norm)
            _register(norm, "weight", UnitOffset(), norm.weight.detach() - 1.0)
        for ours in ("gate_attn", "gate_mlp"):
            _register(block, ours, ConditionedVector(condition, dim, 0.0), torch.zeros(dim))
            if not gate_bias:
                block.parametrizations[ours].original.requires_grad_(False)
        out.add(f"{p}adaln_1.affine.weight", _identity(_parametrization_weight(block.norm1, "weight")))
        out.add(f"{p}adaln_1.affine.bias", _identity(_original(block.norm1, "weight")))
        out.add(f"{p}attn1.q_norm.weight", _identity(_original(block.attn.q_norm, "weight")))
        out.add(f"{p}attn1.k_norm.weight", _identity(_original(block.attn.k_norm, "weight")))
        out.add(f"{p}attn1.to_q.weight", _identity(_param(block.attn.to_q, "weight")))
        out.add(f"{p}attn1.to_kv.weight", _identity(_param(block.attn.to_kv, "weight")))
        out.add(f"{p}attn1.proj.weight", _identity(_param(block.attn.proj, "weight")))
        out.add(f"{p}attn1.proj.bias", _identity(_param(block.attn.proj, "bias")))
        out.add(f"{p}gate1.weight", _identity(_parametrization_weight(block, "gate_attn")))
        if gate_bias:
            out.add(f"{p}gate1.bias", _identity(_original(block, "gate_attn")))
        out.add(f"{p}adaln_mlp.affine.weight", _identity(_parametrization_weight(block.norm2, "weight")))
        out.add(f"{p}adaln_mlp.affine.bias", _identity(_original(block.norm2, "weight")))
        out.add(f"{p}ffn.fc1.weight", _identity(_param(block.mlp.fc1, "weight")))
        out.add(f"{p}ffn.fc1.bias", _identity(_param(block.mlp.fc1, "bias")))
        out.add(f"{p}ffn.fc2.weight", _identity(_param(block.mlp.fc2, "weight")))
        out.add(f"{p}ffn.fc2.bias", _identity(_param(block.mlp.fc2, "bias")))
        out.add(f"{p}gate_mlp.weight", _identity(_parametrization_weight(block, "gate_mlp")))
        if gate_bias:
            out.add(f"{p}gate_mlp.bias", _identity(_original(block, "gate_mlp")))


def _parametrize_official_encoder(
    encoder: nn.Module,
    prefix: str,
    quantizers: list[tuple[str, nn.Module]],
    cond_dim: int,
    num_labels: int,
    gate_bias: bool,
) -> OfficialParameterMap:
    """Parametrize an encoder ViT (:class:`~prologue_hf.models.layers.PrologueViTEncoder`) and map it with the
    quantizers reading its output, in the official ``named_parameters()`` order of one official ``Transformer``
    (``learnable_query``, layers, ``cond_proj``, ``input_layer``) followed by each quantizer's tensors. The condition
    becomes ``encoder.condition``."""
    encoder.condition = NullCondition(num_labels, cond_dim)
    out = OfficialParameterMap()
    if encoder.queries is not None:
        out.add(f"{prefix}learnable_query", _identity(_param(encoder, "queries")))
    _parametrize_vit_stack(encoder, encoder.condition, prefix, out, gate_bias)
    _condition_slots(out, prefix, encoder.condition)
    out.add(f"{prefix}input_layer.weight", _identity(_param(encoder.input_layer, "weight")))
    out.add(f"{prefix}input_layer.bias", _identity(_param(encoder.input_layer, "bias")))
    for official, quantizer in quantizers:
        out.add(f"{official}.proj_in.weight", _identity(_param(quantizer.proj_in, "weight")))
        out.add(f"{official}.proj_in.bias", _identity(_param(quantizer.proj_in, "bias")))
        out.add(f"{official}.embedding.weight", _identity(_param(quantizer.embedding, "weight")))
    return out


def parametrize_official_tokenizer(
    tokenizer: PrologueTokenizerModel, cond_dim: int, num_labels: int, gate_bias: bool = True
) -> tuple[OfficialParameterMap, OfficialParameterMap]:
    """Give ``tokenizer`` (a ``"prologue"`` / ``"2d"`` tokenizer) the official gate/norm parameterisation, in place.

    The conditions of encoder and decoder become ``tokenizer.encoder.condition`` / ``tokenizer.decoder.condition``
    (so each lives in its module's ``parameters()``). The new official tensors start at the official init (gates and
    affines 0 here: call :func:`init_official_parametrization` or write official weights through the maps).

    Returns the ``(encoder map, decoder map)``: official names ``enc.*``, ``quantizer.*``, ``semantic_quantizer.*``
    and ``dec.*``, in the official ``named_parameters()`` order.
    """
    if tokenizer.config.tokenizer_type == "1d":
        raise NotImplementedError("the official training parameterisation is implemented for 'prologue' and '2d' tokenizers")
    if any(parametrize.is_parametrized(m) for m in tokenizer.modules()):
        raise ValueError("tokenizer is already parametrized (call fold_official_parametrization first)")
    quantizers = [("quantizer", tokenizer.visual_quantizer)]
    if tokenizer.prologue_quantizer is not None:
        quantizers.append(("semantic_quantizer", tokenizer.prologue_quantizer))
    enc = _parametrize_official_encoder(tokenizer.encoder, "enc.", quantizers, cond_dim, num_labels, gate_bias)

    decoder = tokenizer.decoder
    decoder.condition = NullCondition(num_labels, cond_dim)
    dec = OfficialParameterMap()
    _parametrize_vit_stack(decoder, decoder.condition, "dec.", dec, gate_bias)
    dim = decoder.norm.weight.shape[0]
    _register(decoder.norm, "weight", ConditionedVector(decoder.condition, dim, 1.0), torch.zeros(dim))
    dec.add("dec.out_norm.affine.weight", _identity(_parametrization_weight(decoder.norm, "weight")))
    dec.add("dec.out_norm.affine.bias", _identity(_original(decoder.norm, "weight")))
    dec.add("dec.out.weight", _identity(_param(decoder.output_layer, "weight")))
    dec.add("dec.out.bias", _identity(_param(decoder.output_layer, "bias")))
    _condition_slots(dec, "dec.", decoder.condition)
    dec.add("dec.input_layer.weight", _identity(_param(decoder.input_layer, "weight")))
    dec.add("dec.input_layer.bias", _identity(_param(decoder.input_layer, "bias")))
    return enc, dec


def parametrize_official_post(
    post: ProloguePostModel, cond_dim: int, num_labels: int, gate_bias: bool = True
) -> OfficialParameterMap:
    """Give a :class:`~prologue_hf.ProloguePostModel` the official parameterisation of its prologue encoder, in
    place; returns its map (official names ``semantic_enc.*`` and ``semantic_quantizer.*``: the parameters the
    official Prologue-Post run optimises, ``Encoder.semantic_parameters()``). The frozen visual tokenizer is not a
    submodule and is left alone. The condition becomes ``post.prologue_encoder.condition``."""
    if any(parametrize.is_parametrized(m) for m in post.modules()):
        raise ValueError("post is already parametrized (call fold_official_parametrization first)")
    quantizers = [("semantic_quantizer", post.prologue_quantizer)]
    return _parametrize_official_encoder(post.prologue_encoder, "semantic_enc.", quantizers, cond_dim, num_labels, gate_bias)


# --------------------------------------------------------------------------------------------------------------- AR
def _rope_permutation(head_dim: int) -> torch.Tensor:
    # the converter's channel order (official adjacent pairs -> Llama halves); kept in step with conversion.official
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def parametrize_official_ar(
    ar: PrologueARForCausalLM, cond_dim: int, labels: torch.Tensor | None = None
) -> OfficialParameterMap:
    """Give ``ar`` the official gated, conditioned parameterisation, in place; returns its map (``bos_emb.weight``,
    ``semantic_emb.weight``, ``ar_model.*``, in the official ``named_parameters()`` order).

    ``ar`` must have the official layout (``use_qk_norm``, ``rope_axes_dim``, GEGLU without biases, no GQA).
    ``labels`` ``[num_labels]`` is the AR Transformer's constant label (``uncond_ar_labels``; default the null one-hot).
    The condition becomes ``ar.model.condition``. With untied heads the official ``ar_model.out.weight`` is the first
    ``V + P + 1`` rows of ``lm_head`` (the class rows are never trained: the official logits have no class columns).
    """
    config = ar.config
    if not config.use_qk_norm or config.rope_axes_dim is None or config.attention_bias or config.mlp_bias:
        raise ValueError("the official AR parameterisation needs use_qk_norm=True, rope_axes_dim set and no biases")
    if config.num_key_value_heads != config.num_attention_heads:
        raise ValueError("the official AR has no grouped-query attention")
    if any(parametrize.is_parametrized(m) for m in ar.modules()):
        raise ValueError("ar is already parametrized (call fold_official_parametrization first)")
    vocabulary = config.vocabulary
    num_labels = vocabulary.num_classes + 1
    ar_vocab = vocabulary.class_offset
    dim, heads = config.hidden_size, config.num_attention_heads
    perm = _rope_permutation(dim // heads)
    model = ar.model
    model.condition = NullCondition(num_labels, cond_dim, labels)
    condition = model.condition

    out = OfficialParameterMap()
    out.add("bos_emb.weight", _rows(_param(model.embed_tokens, "weight"), ar_vocab, ar_vocab + num_labels))
    out.add("semantic_emb.weight", _rows(_param(model.embed_tokens, "weight"), 0, ar_vocab))
    for i, layer in enumerate(model.layers):
        p = f"ar_model.layers.{i}."
        attn, mlp = layer.self_attn, layer.mlp
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            _register(norm, "weight", ConditionedVector(condition, dim, 1.0), torch.zeros(dim))
        for norm in (attn.q_norm, attn.k_norm):
            _register(norm, "weight", UnitOffset(), norm.weight.detach() - 1.0)
        _register(attn.o_proj, "weight", ConditionedRowScale(condition, dim), attn.o_proj.weight.detach())
        _register(mlp.down_proj, "weight", ConditionedRowScale(condition, dim), mlp.down_proj.weight.detach())
        out.add(f"{p}adaln_1.affine.weight", _identity(_parametrization_weight(layer.input_layernorm, "weight")))
        out.add(f"{p}adaln_1.affine.bias", _identity(_original(layer.input_layernorm, "weight")))
        out.add(f"{p}attn1.q_norm.weight", _permuted(_original(attn.q_norm, "weight"), 1, perm))
        out.add(f"{p}attn1.k_norm.weight", _permuted(_original(attn.k_norm, "weight"), 1, perm))
        out.add(f"{p}attn1.to_q.weight", _permuted(_param(attn.q_proj, "weight"), heads, perm))
        out.add(
            f"{p}attn1.to_kv.weight",
            _stacked(_permuted(_param(attn.k_proj, "weight"), heads, perm), _identity(_param(attn.v_proj, "weight"))),
        )
        out.add(f"{p}attn1.proj.weight", _identity(_original(attn.o_proj, "weight")))
        out.add(f"{p}gate1.weight", _identity(_parametrization_weight(attn.o_proj, "weight")))
        out.add(f"{p}adaln_mlp.affine.weight", _identity(_parametrization_weight(layer.post_attention_layernorm, "weight")))
        out.add(f"{p}adaln_mlp.affine.bias", _identity(_original(layer.post_attention_layernorm, "weight")))
        out.add(
            f"{p}ffn.fc1.weight",
            _stacked(_identity(_param(mlp.up_proj, "weight")), _identity(_param(mlp.gate_proj, "weight"))),
        )
        out.add(f"{p}ffn.fc2.weight", _identity(_original(mlp.down_proj, "weight")))
        out.add(f"{p}gate_mlp.weight", _identity(_parametrization_weight(mlp.down_proj, "weight")))
    _register(model.norm, "weight", ConditionedVector(condition, dim, 1.0), torch.zeros(dim))
    out.add("ar_model.out_norm.affine.weight", _identity(_parametrization_weight(model.norm, "weight")))
    out.add("ar_model.out_norm.affine.bias", _identity(_original(model.norm, "weight")))
    if not config.tie_word_embeddings:
        out.add("ar_model.out.weight", _rows(_param(ar.lm_head, "weight"), 0, ar_vocab))
    _condition_slots(out, "ar_model.", condition)
    return out


# -------------------------------------------------------------------------------------------------- init and fold
@torch.no_grad()
def init_official_parametrization(maps: list[OfficialParameterMap], generator: torch.Generator | None = None) -> None:
    """The official init of the tensors the parameterisation adds: gate and affine weights ``trunc N(0, 0.02) * 1e-5``,
    their biases 0, ``cond_proj.0`` ``trunc N(0, 0.02)`` with bias 0, ``cond_proj.1`` and q/k norm offsets 0."""
    for official_map in maps:
        for name, _ in official_map.items():
            (tensor,) = official_map.parameters(name)[:1]
            if re.search(r"(adaln_1|adaln_mlp|out_norm)\.affine\.weight$|(gate1|gate_mlp)\.weight$", name):
                value = torch.empty(tensor.shape)
                nn.init.trunc_normal_(value, std=OFFICIAL_LINEAR_INIT_STD, generator=generator)
                official_map.write(name, value * OFFICIAL_GATE_INIT_SCALE)
            elif re.search(r"affine\.bias$|(gate1|gate_mlp)\.bias$|cond_proj\.(0\.bias|1\.weight)$|[qk]_norm\.weight$", name):
                official_map.write(name, torch.zeros(tensor.shape))
            elif name.endswith("cond_proj.0.weight"):
                value = torch.empty(tensor.shape)
                nn.init.trunc_normal_(value, std=OFFICIAL_LINEAR_INIT_STD, generator=generator)
                official_map.write(name, value)


@torch.no_grad()
def match_plain_values(model: nn.Module, plain: dict[str, torch.Tensor]) -> None:
    """Set the stored tensors of every parametrization so that ``model`` computes exactly what it computed before it
    was parametrized (``plain``: its ``state_dict()`` from then). Gates and norm scales keep their ``W`` (e.g. the
    official init) and take ``bias = plain - offset - W c``; a gate folded into a projection (AR) becomes
    ``G = 1 c^T / |c|^2`` (``G c = 1``) with the plain projection. For continuing from trained plain weights."""
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for name, chain in module.parametrizations.items():
            target = plain[f"{module_name}.{name}" if module_name else name].to(chain.original.dtype)
            p = chain[0]
            if isinstance(p, ConditionedVector):
                chain.original.copy_(target - p.offset - F.linear(p.condition(), p.weight.float()).to(target.dtype))
            elif isinstance(p, ConditionedRowScale):
                c = p.condition()
                p.weight.copy_(torch.outer(torch.ones(p.weight.shape[0]), c) / c.dot(c))
                chain.original.copy_(target)
            elif isinstance(p, UnitOffset):
                chain.original.copy_(target - 1.0)


def folded_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict ``model`` would have without the parameterisation: each parametrized tensor under its plain name
    with its current value, the official tensors and the conditions left out. ``model`` is not changed."""
    out = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if "parametrizations" not in parts and "condition" not in parts:
            out[key] = value.detach().clone()
    with torch.no_grad():
        for module_name, module in model.named_modules():
            if parametrize.is_parametrized(module):
                for name in module.parametrizations.keys():
                    out[f"{module_name}.{name}" if module_name else name] = getattr(module, name).detach().clone()
    return out


def folded_copy(model: PrologueTokenizerModel | ProloguePostModel | PrologueARForCausalLM) -> nn.Module:
    """A new plain model (same class and config) holding :func:`folded_state_dict` of ``model``; ``model`` and any
    deep copy of it are untouched (``fold_official_parametrization`` on a deep copy would not be: the parametrized
    classes are shared between copies)."""
    with torch.random.fork_rng(devices=[]):  # the throw-away init must not move the training run's RNG stream
        plain = type(model)(model.config)
    plain.load_state_dict(folded_state_dict(model), strict=True)
    if getattr(model.config, "tie_word_embeddings", False) and hasattr(plain, "tie_weights"):
        plain.tie_weights()
    plain = plain.to(next(model.parameters()).dtype).train(model.training)
    if isinstance(model, ProloguePostModel) and model.has_visual_tokenizer:
        # attached after the cast: the frozen tokenizer is shared with the training model and keeps its own dtype
        plain.set_visual_tokenizer(model.visual_tokenizer, verify=False)
    return plain


def fold_official_parametrization(model: nn.Module) -> nn.Module:
    """Fold every official parameterisation of ``model`` into plain tensors (``leave_parametrized=True``) and drop the
    conditions, in place: the result is the ordinary model, with the same forward, ready for ``save_pretrained``.

    Not for a model with live deep copies (e.g. an EMA copy): torch's parametrized classes are shared between copies
    and removing a parametrization edits the class. Use :func:`folded_copy` there."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    for module in list(model.modules()):
        if isinstance(getattr(module, "condition", None), NullCondition):
            del module.condition
    return model


def is_official_parametrized(model: nn.Module) -> bool:
    """Whether ``model`` carries the official training parameterisation."""
    return any(isinstance(m, NullCondition) for m in model.modules())


__all__ = [
    "ConditionedRowScale",
    "ConditionedVector",
    "NullCondition",
    "OfficialParameterMap",
    "UnitOffset",
    "fold_official_parametrization",
    "folded_copy",
    "folded_state_dict",
    "match_plain_values",
    "init_official_parametrization",
    "is_official_parametrized",
    "parametrize_official_ar",
    "parametrize_official_post",
    "parametrize_official_tokenizer",
]
