"""The decode path of the Prologue AR used by the sampler: fused, pre-packed weights and a static KV cache.

Sampling pushes ``R`` rows (``2B`` with guidance) through every weight matrix once per generated token, 273 times
for an image. At so few rows the step is bound by reading the weights, and the stock forward loses time three ways
(``docs/benchmarks.md``, B config, 2-core CPU): ``F.linear`` re-packs each weight inside every BLAS call (fp32 at 16
rows: 57 ms per step for the matmuls against 38 ms with MKL's pre-packed GEMM, ``benchmarks/bench_linear_kernels.py``);
q/k/v and gate/up are separate products; the Llama modules add Python and small ops to every layer.
:class:`PackedARDecoder` does the same math as :class:`~prologue_hf.PrologueARForCausalLM` in eval mode with

* q/k/v fused into one weight and gate/up into another (fewer, larger products);
* weights laid out once per sampling run for the number of rows (:class:`PackedLinear`: MKL packed SGEMM for fp32,
  oneDNN's packed layout for bf16 on CPU, plain ``F.linear`` elsewhere), each layout checked against ``F.linear``
  when built;
* a KV cache ``[R, kv_heads, T, head_dim]`` per layer, allocated once and written by position;
* the output head restricted to the ids the step may produce (the visual rows for visual steps, the prologue rows
  for prologue steps): the other logits are masked to ``-inf`` by the sampler anyway, so they are returned as 0.

It fuses and packs the model's parameters when built and does not follow later updates: build it per sampling run,
after the last weight update (``generate_ids`` does).
:func:`packed_decoder_unsupported` says why a model must take the stock forward instead (adapters, hooks, dropout in
training mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from packaging import version
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from ..models.modeling_prologue_ar import PrologueARForCausalLM

_SDPA_HAS_GQA = version.parse(torch.__version__).release >= (2, 5)  # `enable_gqa` appeared in torch 2.5


class PackedLinear:
    """``y = x @ weight.T + bias`` with ``weight`` ``[out, in]`` stored in the layout that is fastest for ``rows``-row
    inputs on its device and dtype.

    ``weight`` may be a list of ``[out_i, in]`` matrices (q / k / v, gate / up): they are fused into one product of
    ``sum(out_i)`` outputs. ``kernel`` is ``"mkl"`` (CPU float32, MKL packed SGEMM), ``"onednn"`` (CPU bfloat16,
    oneDNN reordered weight) or ``"linear"`` (``F.linear``: other devices and dtypes, or when the packed kernel is
    missing or disagrees with ``F.linear`` on a probe input).

    A packed kernel keeps only its packed copy: the fused plain matrix, a second copy of the weights, is dropped once
    packed (inputs given as a list stay referenced, they are the model's own parameters). Inputs with another row
    count still give the same result: fewer rows are zero-padded to ``rows`` for the MKL kernel (the product costs the
    same, it reads the same weight), more rows (a multi-position prefill) take ``F.linear`` on the given matrices.
    """

    def __init__(self, weight: torch.Tensor | Sequence[torch.Tensor], bias: torch.Tensor | None, rows: int):
        self.parts = [weight] if isinstance(weight, torch.Tensor) else list(weight)
        fused = self.parts[0] if len(self.parts) == 1 else torch.cat(self.parts)
        self.shape = tuple(fused.shape)  # (out_features, in_features)
        self.bias, self.rows = bias, rows
        self.kernel, self._packed, self._weight = "linear", None, fused
        if fused.device.type != "cpu":
            return
        # MKL's packed product also takes the plain matrix, read only for another row count, which never reaches it
        self._shape_only = fused.new_zeros(1).expand(self.shape)
        try:
            if fused.dtype == torch.float32 and torch.backends.mkl.is_available():
                self._packed = torch.ops.mkl._mkl_reorder_linear_weight(fused, rows)
                self.kernel = "mkl"
            elif fused.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported():
                self._packed = torch.ops.mkldnn._reorder_linear_weight(fused, rows)
                self.kernel = "onednn"
        except (RuntimeError, AttributeError):  # a build without the kernel: the plain product
            self.kernel, self._packed = "linear", None
        if self.kernel != "linear" and not self._agrees_with_linear():
            self.kernel, self._packed = "linear", None
        if self.kernel != "linear" and len(self.parts) > 1:
            self._weight = None

    def _agrees_with_linear(self) -> bool:
        probe = torch.randn(self.rows, self.shape[1], generator=torch.Generator().manual_seed(0))
        probe = probe.to(self._weight.dtype)
        try:
            packed = self._packed_product(probe)
        except RuntimeError:
            return False
        reference = F.linear(probe, self._weight, self.bias)
        tolerance = 1e-4 if self._weight.dtype == torch.float32 else 2e-2
        scale = reference.float().abs().max().clamp_min(1.0)
        return packed.shape == reference.shape and bool(((packed.float() - reference.float()).abs().max() / scale) <= tolerance)

    def _packed_product(self, x: torch.Tensor) -> torch.Tensor:
        """The packed kernel's product; for ``"mkl"``, ``x`` must have exactly ``rows`` rows."""
        if self.kernel == "mkl":
            return torch.ops.mkl._mkl_linear(x, self._packed, self._shape_only, self.bias, self.rows)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "onednn":
            return self._packed_product(x)
        if self.kernel == "mkl":
            rows = x.numel() // self.shape[1]
            if rows == self.rows:
                return self._packed_product(x)
            if rows < self.rows:
                padded = x.new_zeros(self.rows, self.shape[1])
                padded[:rows] = x.reshape(rows, self.shape[1])
                return self._packed_product(padded)[:rows].view(*x.shape[:-1], self.shape[0])
        if self._weight is not None:
            return F.linear(x, self._weight, self.bias)
        out = torch.cat([F.linear(x, part) for part in self.parts], dim=-1)
        return out if self.bias is None else out + self.bias


def packed_decoder_unsupported(ar: nn.Module) -> str | None:
    """Why :class:`PackedARDecoder` cannot stand in for ``ar``'s forward, or ``None`` when it can.

    It reads the parameters of a plain :class:`~prologue_hf.PrologueARForCausalLM` directly, so anything that changes
    the forward without changing those parameters rules it out: a subclass, replaced modules (LoRA / quantized
    linears), forward hooks, or active dropout.
    """
    if type(ar) is not PrologueARForCausalLM:
        return f"{type(ar).__name__} is not a plain PrologueARForCausalLM"
    for name, module in ar.named_modules():
        if module._forward_hooks or module._forward_pre_hooks:
            return f"module {name or '<root>'} has forward hooks"
    config = ar.config
    if ar.training and max(config.attention_dropout, config.embedding_dropout, config.hidden_dropout) > 0:
        return "the model is in training mode with dropout > 0"
    for index, layer in enumerate(ar.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        if any(type(module) is not nn.Linear for module in linears):
            return f"layer {index} has replaced linear modules (adapters or quantization)"
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        if any(type(norm) is not LlamaRMSNorm for norm in norms):
            return f"layer {index} has replaced norms"
    if type(ar.lm_head) is not nn.Linear or type(ar.model.norm) is not LlamaRMSNorm:
        return "the output head or final norm was replaced"
    if ar.lm_head.weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"weights of dtype {ar.lm_head.weight.dtype} (floating point expected)"
    return None


def _rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    # one call instead of LlamaRMSNorm's six ops (fewer dispatches; measured 16 vs 24 us at 2 rows on a warm cache);
    # the same float32 values, within one rounding in bfloat16 (LlamaRMSNorm rounds before the scale, rms_norm after)
    return x if weight is None else F.rms_norm(x, weight.shape, weight, eps)


def rotation_matrices(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as one ``[head_dim, head_dim]`` matrix per position: ``x @ R[t]`` equals Llama's
    ``x * cos[t] + rotate_half(x) * sin[t]`` (half-split layout) for ``cos``, ``sin`` ``[T, head_dim]``.

    One small matmul per step rotates every query and key head at once (Llama's form takes six element-wise ops for
    each of q and k).
    """
    length, dim = cos.shape
    half = dim // 2
    rotation = torch.diag_embed(cos)  # R[t, j, i]: weight of input channel j in output channel i
    index = torch.arange(half, device=cos.device)
    rotation[:, index + half, index] = -sin[:, :half]  # out[i] = x[i] cos[i] - x[i + h] sin[i]
    rotation[:, index, index + half] = sin[:, half:]  # out[i + h] = x[i + h] cos[i + h] + x[i] sin[i + h]
    return rotation


def _rotate(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    return (x.float() @ rotations).to(x.dtype)


class _Layer:
    """One decoder layer's weights in decode layout."""

    def __init__(self, layer: nn.Module, rows: int):
        attn, mlp = layer.self_attn, layer.mlp
        self.eps = layer.input_layernorm.variance_epsilon
        self.input_norm = layer.input_layernorm.weight
        self.post_attention_norm = layer.post_attention_layernorm.weight
        self.q_norm = attn.q_norm.weight if isinstance(attn.q_norm, LlamaRMSNorm) else None
        self.k_norm = attn.k_norm.weight if isinstance(attn.k_norm, LlamaRMSNorm) else None
        self.qk_eps = attn.q_norm.variance_epsilon if self.q_norm is not None else self.eps
        self.qkv = PackedLinear(
            [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight],
            _cat_biases(attn.q_proj, attn.k_proj, attn.v_proj),
            rows,
        )
        self.o = PackedLinear(attn.o_proj.weight, attn.o_proj.bias, rows)
        self.gate_up = PackedLinear(
            [mlp.gate_proj.weight, mlp.up_proj.weight], _cat_biases(mlp.gate_proj, mlp.up_proj), rows
        )
        self.intermediate = mlp.gate_proj.out_features
        self.down = PackedLinear(mlp.down_proj.weight, mlp.down_proj.bias, rows)
        self.act = mlp.act_fn
        self.scaling = attn.scaling


def _cat_biases(*linears: nn.Linear) -> torch.Tensor | None:
    if all(linear.bias is None for linear in linears):
        return None
    return torch.cat([linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features) for linear in linears])


class PackedARDecoder:
    """Inference forward of a :class:`~prologue_hf.PrologueARForCausalLM` for ``rows`` sequences of at most
    ``max_length`` positions, one call per prefill or decode step.

    Args:
        ar: the AR (see :func:`packed_decoder_unsupported`); its device and dtype are used.
        rows: batch rows the packed weights are laid out for (the sampler's ``2B`` or ``B``).
        max_length: KV-cache length (class token + generated tokens).
        logit_ranges: per step ``s``, the half-open id range ``(lo, hi)`` whose logits :meth:`forward` computes
            when called with ``step=s``; ``None`` computes every logit.

    >>> from prologue_hf.testing import tiny_ar
    >>> ar = tiny_ar()
    >>> decoder = PackedARDecoder(ar, rows=2, max_length=ar.config.vocabulary.num_generated_tokens + 1)
    >>> embeds = ar.get_input_embeddings()(ar.vocabulary.class_token_ids(torch.tensor([0, 1])))[:, None]
    >>> decoder.forward(embeds).shape  # [rows, keep, vocab]
    torch.Size([2, 1, 92])
    """

    def __init__(
        self,
        ar: PrologueARForCausalLM,
        rows: int,
        max_length: int,
        logit_ranges: list[tuple[int, int]] | None = None,
    ):
        reason = packed_decoder_unsupported(ar)
        if reason is not None:
            raise ValueError(f"PackedARDecoder cannot run this model: {reason}")
        config = ar.config
        self.rows, self.max_length, self.length = rows, max_length, 0
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = ar.model.layers[0].self_attn.head_dim
        self.vocab_size = config.vocab_size
        weight = ar.lm_head.weight
        self.layers = [_Layer(layer, rows) for layer in ar.model.layers]
        self.final_norm, self.final_eps = ar.model.norm.weight, ar.model.norm.variance_epsilon
        # the head split by step range: one packed weight per distinct range (visual rows, prologue rows, ...)
        self.logit_ranges = logit_ranges
        self._heads: dict[tuple[int, int], PackedLinear] = {}
        for lo, hi in sorted(set(logit_ranges or [(0, self.vocab_size)])):
            self._heads[(lo, hi)] = PackedLinear(weight[lo:hi], None, rows)
        shape = (rows, self.num_kv_heads, max_length, self.head_dim)
        self.keys = [weight.new_empty(shape) for _ in self.layers]
        self.values = [weight.new_empty(shape) for _ in self.layers]
        positions = torch.arange(max_length, device=weight.device)[None]
        cos, sin = ar.model.rotary_emb(weight.new_empty(1, dtype=torch.float32), positions)  # [1, T, head_dim]
        # kept in float32: a bfloat16 batched matmul of this size costs 3.7x the float32 one (138 vs 37 us, B, 16 rows)
        self.rotations = rotation_matrices(cos[0], sin[0])  # [T, head_dim, head_dim]

    @property
    def linears(self) -> list[PackedLinear]:
        """Every product of a decode step in order: per layer q/k/v, o, gate/up, down; then the head(s)."""
        per_layer = [linear for layer in self.layers for linear in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        return per_layer + list(self._heads.values())

    @property
    def kernels(self) -> set[str]:
        """The :class:`PackedLinear` kernels in use (``{"mkl"}``, ``{"onednn"}``, ``{"linear"}``, ...)."""
        return {linear.kernel for linear in self.linears}

    def keep_first_rows(self, rows: int) -> None:
        """Drop every batch row from ``rows`` on (views: nothing is copied)."""
        self.keys = [k[:rows] for k in self.keys]
        self.values = [v[:rows] for v in self.values]

    def forward(self, embeds: torch.Tensor, step: int | None = None, keep: int = 1) -> torch.Tensor:
        """Append ``embeds`` ``[R, L, hidden]`` at the next ``L`` positions and return the logits ``[R, keep, vocab]``
        of the last ``keep`` of them.

        ``step`` selects the id range of :attr:`logit_ranges` (a single position only); ids outside it get logit 0.
        """
        rows, length, _ = embeds.shape
        start, end = self.length, self.length + length
        if length > 1 and start > 0:
            raise ValueError("a multi-position call must be the first one (prefill); later calls take one position")
        if end > self.max_length:
            raise ValueError(f"the KV cache holds {self.max_length} positions, asked to store {end}")
        rotations = self.rotations[start:end]  # [L, head_dim, head_dim]: q, k [R, L, heads, head_dim] @ it
        h = embeds
        for index, layer in enumerate(self.layers):
            h = h + self._attention(layer, _rms_norm(h, layer.input_norm, layer.eps), index, start, end, rotations)
            x = _rms_norm(h, layer.post_attention_norm, layer.eps)
            gate, up = layer.gate_up(x).split(layer.intermediate, dim=-1)
            h = h + layer.down(layer.act(gate) * up)
        self.length = end
        h = _rms_norm(h[:, length - keep :], self.final_norm, self.final_eps)
        ranges = self._heads.keys() if step is None or self.logit_ranges is None else [self.logit_ranges[step]]
        logits = h.new_zeros(*h.shape[:-1], self.vocab_size)
        for lo, hi in ranges:
            logits[..., lo:hi] = self._heads[(lo, hi)](h)
        return logits

    def _attention(self, layer: _Layer, x, index: int, start: int, end: int, rotations) -> torch.Tensor:
        rows, length, _ = x.shape
        heads, kv_heads = self.num_heads, self.num_kv_heads
        qkv = layer.qkv(x).view(rows, length, heads + 2 * kv_heads, self.head_dim)
        if layer.q_norm is None:
            qk = _rotate(qkv[:, :, : heads + kv_heads], rotations)  # [R, L, H + Hkv, head_dim]
            q, k = qk[:, :, :heads], qk[:, :, heads:]
        else:
            q = _rotate(_rms_norm(qkv[:, :, :heads], layer.q_norm, layer.qk_eps), rotations)
            k = _rotate(_rms_norm(qkv[:, :, heads : heads + kv_heads], layer.k_norm, layer.qk_eps), rotations)
        q = q.transpose(1, 2)
        keys, values = self.keys[index][:rows], self.values[index][:rows]
        keys[:, :, start:end] = k.transpose(1, 2)
        values[:, :, start:end] = qkv[:, :, heads + kv_heads :].transpose(1, 2)
        keys, values = keys[:, :, :end], values[:, :, :end]
        gqa = {}
        if kv_heads != heads:
            if _SDPA_HAS_GQA:
                gqa = {"enable_gqa": True}
            else:  # torch < 2.5: SDPA needs as many key / value heads as query heads
                keys = keys.repeat_interleave(heads // kv_heads, dim=1)
                values = values.repeat_interleave(heads // kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, is_causal=length > 1, scale=layer.scaling, **gqa)
        return layer.o(out.transpose(1, 2).reshape(rows, length, -1))


__all__ = ["PackedARDecoder", "PackedLinear", "packed_decoder_unsupported"]
