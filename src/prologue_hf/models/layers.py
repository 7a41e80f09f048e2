"""Building blocks of the Prologue ViT tokenizer: RMSNorm, GEGLU MLP, multi-axis RoPE, attention, block.

The math follows the official Prologue code (described in
``tests/fixtures/official-prologue-tiny/SPEC.md`` section 1) so that official checkpoints convert by copying
tensors. Where the official code computes a norm affine or a residual gate from a *constant* null label, these
blocks hold a plain learned vector instead (the converter folds the constant in).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Unit-normalise the last dimension (``max(||x||, 1e-12)`` in the denominator, as ``F.normalize``)."""
    return F.normalize(x, dim=-1)


class PrologueRMSNorm(nn.Module):
    """``x / ||x||_2 * sqrt(dim) * weight``, computed in float32.

    Equal to the usual RMSNorm with ``eps`` folded into ``F.normalize``'s ``1e-12`` floor: this is exactly the
    official ``AdaRMSNorm`` with its ``(1 + w)`` affine stored as ``weight``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.scale = math.sqrt(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = F.normalize(x.float(), dim=-1) * self.scale
        return (x * self.weight.float()).to(dtype)


class GegluMLP(nn.Module):
    """``fc2(gelu_tanh(value) * gate)`` with ``gate, value = fc1(x).chunk(2)`` (the first half is the gate)."""

    def __init__(self, dim: int, hidden_dim: int, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.gelu(value, approximate="tanh") * gate)


def multi_axis_rope_angles(
    position_ids: torch.Tensor, thetas: torch.Tensor, axes_dim: Sequence[int]
) -> torch.Tensor:
    """Rotation angles of multi-axis (Flux-style) RoPE.

    Args:
        position_ids: ``[L, num_axes]`` integer positions of each token along each axis.
        thetas: ``[L]`` RoPE base of each token (patches and queries use different bases in Prologue).
        axes_dim: channels per axis; ``sum(axes_dim) == head_dim``, each even.

    Returns:
        ``[L, head_dim // 2]`` float64 angles; pair ``k`` of axis ``a`` turns by ``pos_a * theta^(-2k / axes_dim[a])``.
    """
    angles = []
    for axis, dim in enumerate(axes_dim):
        exponent = torch.arange(0, dim, 2, dtype=torch.float64) / dim  # [dim/2]
        omega = 1.0 / thetas.double()[:, None] ** exponent[None, :]  # [L, dim/2]
        angles.append(position_ids[:, axis].double()[:, None] * omega)
    return torch.cat(angles, dim=-1)


def apply_adjacent_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs ``(2i, 2i+1)`` of ``x`` ``[B, H, L, D]`` by angles with ``cos``/``sin`` ``[L, D/2]``.

    Computed in float32, as in the official code.
    """
    dtype = x.dtype
    pairs = x.float().unflatten(-1, (-1, 2))  # [B, H, L, D/2, 2]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack((cos * x0 - sin * x1, sin * x0 + cos * x1), dim=-1)
    return out.flatten(-2).to(dtype)


class ViTAttention(nn.Module):
    """Bidirectional multi-head attention with per-head q/k RMSNorm applied before RoPE.

    ``to_kv`` holds K in its first ``dim`` outputs and V in the next ``dim``; heads are contiguous blocks of
    ``head_dim`` channels (the official layout).
    """

    def __init__(self, dim: int, num_heads: int, out_bias: bool = True, attn_dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} must be divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_dropout = attn_dropout
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.q_norm = PrologueRMSNorm(self.head_dim)
        self.k_norm = PrologueRMSNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim, bias=out_bias)

    def forward(self, x: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q = self.to_q(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.to_kv(x).view(batch, length, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = apply_adjacent_rope(self.q_norm(q), rope_cos, rope_sin)
        k = apply_adjacent_rope(self.k_norm(k), rope_cos, rope_sin)
        dropout = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # [B, H, L, head_dim]
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class ViTBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block with layer-scale residual gates.

    ``x += gate_attn * attn(norm1(x)); x += gate_mlp * mlp(norm2(x))``. The gates are the official label-conditioned
    gates evaluated at the constant null label, i.e. per-channel learned vectors (layer scale).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden_dim: int,
        bias: bool = True,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        gate_init: float = 1e-5,
    ):
        super().__init__()
        self.norm1 = PrologueRMSNorm(dim)
        self.attn = ViTAttention(dim, num_heads, out_bias=bias, attn_dropout=attn_dropout)
        self.gate_attn = nn.Parameter(torch.full((dim,), gate_init))
        self.norm2 = PrologueRMSNorm(dim)
        self.mlp = GegluMLP(dim, mlp_hidden_dim, bias=bias)
        self.gate_mlp = nn.Parameter(torch.full((dim,), gate_init))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor) -> torch.Tensor:
        x = x + self.gate_attn * self.dropout(self.attn(self.norm1(x), rope_cos, rope_sin))
        x = x + self.gate_mlp * self.dropout(self.mlp(self.norm2(x)))
        return x
