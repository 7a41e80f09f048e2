"""The two quantizers of the Prologue tokenizer.

Both project the encoder output to ``z_dim``, L2-normalise it and match it against an L2-normalised codebook by
cosine similarity (paper appendix E: "vanilla L2-Normed VQ"; one normalisation flag drives both the search and the
lookup, so ``encode -> decode`` and the training forward agree).

* :class:`L2VectorQuantizer` (visual tokens): straight-through estimator and VQ losses.
* :class:`ProbSTEQuantizer` (prologue tokens): Prob-STE (paper section 2.2). The forward pass is the hard argmax
  one-hot, the backward pass goes through ``softmax(cos / tau)``; it returns the soft one-hot ``p~`` so an AR model
  can embed ``p~ @ W_emb`` and send its cross-entropy gradient back to the encoder.

:func:`straight_through_onehot` is that one-hot on its own; the stage-1 "AR regularisation on visual tokens"
baseline applies it to the visual quantizer's cosine logits too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import l2_normalize


@dataclass
class QuantizerOutput:
    """What a quantizer returns for ``h`` of shape ``[B, L, dim]``.

    Attributes:
        ids: ``[B, L]`` int64 code ids.
        quantized: ``[B, L, z_dim]`` straight-through code vectors (forward value = normalised codebook row).
        normalized_features: ``[B, L, z_dim]`` L2-normalised pre-quantisation features.
        logits: ``[B, L, codebook_size]`` cosine similarities.
        soft_onehot: ``[B, L, codebook_size]`` Prob-STE one-hot ``p + sg(onehot - p)`` (Prob-STE only, else None).
        loss: scalar VQ loss (codebook + beta * commitment; zero for Prob-STE, whose only training signal is the
            AR cross-entropy).
    """

    ids: torch.Tensor
    quantized: torch.Tensor
    normalized_features: torch.Tensor
    logits: torch.Tensor
    soft_onehot: torch.Tensor | None
    loss: torch.Tensor


def straight_through_onehot(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Straight-through soft-max one-hot ``p + sg(onehot(argmax logits) - p)`` with ``p = softmax(logits / tau)``.

    ``logits`` ``[..., codebook_size]`` -> ``[..., codebook_size]`` float32: the forward value is the hard one-hot of
    the argmax (so ``tau`` never changes the ids), the gradient is the soft-max's. The one Prob-STE of the library
    (paper section 2.2): :class:`ProbSTEQuantizer` and the stage-1 visual AR-regularisation baseline both use it.

    >>> straight_through_onehot(torch.tensor([[0.9, 0.1, -0.2]])).tolist()
    [[1.0, 0.0, 0.0]]
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    hard = F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(probs.dtype)
    return probs + (hard - probs).detach()


class _CosineCodebook(nn.Module):
    def __init__(self, dim: int, z_dim: int, codebook_size: int):
        super().__init__()
        self.codebook_size = codebook_size
        self.proj_in = nn.Linear(dim, z_dim)
        self.embedding = nn.Embedding(codebook_size, z_dim)

    def normalized_codebook(self) -> torch.Tensor:
        """``[codebook_size, z_dim]`` L2-normalised codebook."""
        return l2_normalize(self.embedding.weight.float())

    def match(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(normalized_features, codebook, cosine logits)``, all float32."""
        z = l2_normalize(self.proj_in(hidden_states).float())
        codebook = self.normalized_codebook()
        return z, codebook, z @ codebook.t()

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """``[..., z_dim]`` normalised code vectors of ``ids`` ``[...]``."""
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise ValueError(
                f"ids must lie in [0, {self.codebook_size}); got values in [{int(ids.min())}, {int(ids.max())}]"
            )
        return l2_normalize(self.embedding(ids).float())


class L2VectorQuantizer(_CosineCodebook):
    """Visual quantizer: nearest normalised code, straight-through gradient, ``codebook + beta * commitment`` loss."""

    def __init__(self, dim: int, z_dim: int, codebook_size: int, commitment_beta: float = 0.25):
        super().__init__(dim, z_dim, codebook_size)
        self.commitment_beta = commitment_beta

    def forward(self, hidden_states: torch.Tensor) -> QuantizerOutput:
        z, codebook, logits = self.match(hidden_states)
        ids = logits.argmax(dim=-1)
        codes = F.embedding(ids, codebook)
        # codebook term pulls codes to features, commitment term (beta=0.25) pulls features to codes.
        loss = F.mse_loss(codes, z.detach()) + self.commitment_beta * F.mse_loss(codes.detach(), z)
        quantized = z + (codes - z).detach()
        return QuantizerOutput(ids, quantized, z, logits, None, loss)


class ProbSTEQuantizer(_CosineCodebook):
    """Prologue quantizer with Prob-STE (paper section 2.2 / appendix E).

    ``p = softmax(cos / tau)``; forward uses the hard one-hot ``p^``; backward flows through ``p~ = p + sg(p^ - p)``.
    ``tau`` (default 0.1, the released models' ``SemanticQuantizer.temperature``) does not change the ids.
    """

    def __init__(self, dim: int, z_dim: int, codebook_size: int, temperature: float = 0.1):
        super().__init__(dim, z_dim, codebook_size)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, hidden_states: torch.Tensor) -> QuantizerOutput:
        z, codebook, logits = self.match(hidden_states)
        ids = logits.argmax(dim=-1)
        soft_onehot = straight_through_onehot(logits, self.temperature)
        quantized = soft_onehot @ codebook
        return QuantizerOutput(ids, quantized, z, logits, soft_onehot, logits.new_zeros(()))
