"""Linear probe on mean-pooled tokenizer tokens (paper Table 4).

The paper mean-pools the 16 prologue tokens of the Prologue tokenizer, and the first 16 tokens (raster order, i.e.
the top row of the 16x16 grid) of a standard 2D tokenizer, and trains a linear classifier on ImageNet following
MAE's linear-probe protocol (a parameter-free BatchNorm in front of the linear layer). Here the probe is a
logistic regression in torch: per-feature standardisation with the training statistics (what MAE's
``BatchNorm1d(affine=False)`` amounts to at evaluation), one ``nn.Linear``, AdamW with a cosine schedule.

Which vectors are pooled is a choice the paper does not spell out; :func:`extract_probe_features` offers the
quantised codes (default), the pre-quantisation features and the encoder hidden states.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers.utils import logging

from ..models.modeling_prologue_tokenizer import PrologueTokenizerModel

logger = logging.get_logger(__name__)

TOKEN_SOURCES = ("prologue", "visual")
REPRESENTATIONS = ("quantized", "features", "hidden")


def _split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    labels = None
    if isinstance(batch, Mapping):
        pixels = batch["pixel_values"]
        labels = batch.get("labels", batch.get("label"))
    elif isinstance(batch, (tuple, list)):
        pixels, labels = batch[0], batch[1] if len(batch) > 1 else None
    else:
        pixels = batch
    if pixels.dtype == torch.uint8:
        pixels = PrologueTokenizerModel.preprocess(pixels)
    return pixels, None if labels is None else torch.as_tensor(labels)


@torch.no_grad()
def pooled_token_features(
    tokenizer: PrologueTokenizerModel,
    pixel_values: torch.Tensor,
    source: str = "prologue",
    num_tokens: int | None = None,
    representation: str = "quantized",
) -> torch.Tensor:
    """Mean-pooled token vectors ``[B, D]`` of ``pixel_values`` ``[B, C, H, W]`` (in ``[-1, 1]``).

    Args:
        source: ``"prologue"`` (the K prologue tokens) or ``"visual"`` (the first ``num_tokens`` visual tokens in
            raster order: the 2D-tokenizer baseline of Table 4).
        num_tokens: tokens to pool (default: all K prologue tokens / 16 visual tokens, as the paper).
        representation: ``"quantized"`` (codebook vectors, ``D = codebook_dim``), ``"features"`` (L2-normalised
            pre-quantisation features, ``D = codebook_dim``) or ``"hidden"`` (encoder outputs, ``D = hidden_size``).
    """
    if source not in TOKEN_SOURCES:
        raise ValueError(f"source must be one of {TOKEN_SOURCES}, got {source!r}")
    if representation not in REPRESENTATIONS:
        raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
    config = tokenizer.config
    out = tokenizer.encode(pixel_values.to(device=tokenizer.device, dtype=tokenizer.dtype))
    if source == "prologue":
        if out.prologue_ids is None:
            raise ValueError("source='prologue' needs a tokenizer with prologue tokens (num_prologue_tokens > 0)")
        available = config.num_prologue_tokens
        vectors = {
            "quantized": out.prologue_quantized,
            "features": out.prologue_features,
            # encoder layout: [patch tokens; prologue queries]
            "hidden": out.encoder_hidden_states[:, config.num_patches :],
        }[representation]
    else:
        available = config.num_visual_tokens
        hidden_visual = (
            out.encoder_hidden_states[:, config.num_patches :]
            if config.tokenizer_type == "1d"
            else out.encoder_hidden_states[:, : config.num_patches]
        )
        vectors = {"quantized": out.visual_quantized, "features": out.visual_features, "hidden": hidden_visual}[
            representation
        ]
    num_tokens = num_tokens if num_tokens is not None else (available if source == "prologue" else min(16, available))
    if not 1 <= num_tokens <= available:
        raise ValueError(f"num_tokens must lie in [1, {available}] for source={source!r}, got {num_tokens}")
    return vectors[:, :num_tokens].float().mean(dim=1)


@torch.no_grad()
def extract_probe_features(
    tokenizer: PrologueTokenizerModel,
    batches: Iterable,
    source: str = "prologue",
    num_tokens: int | None = None,
    representation: str = "quantized",
    total_batches: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`pooled_token_features` over a dataloader of ``(pixels, labels)`` tuples, ``{"pixel_values",
    "labels"}`` dicts or bare pixel tensors. Returns ``(features [N, D], labels [N] or None)`` on the CPU."""
    features, labels = [], []
    for batch in tqdm(batches, total=total_batches, desc=f"probe features ({source})"):
        pixels, batch_labels = _split_batch(batch)
        features.append(pooled_token_features(tokenizer, pixels, source, num_tokens, representation).cpu())
        if batch_labels is not None:
            labels.append(batch_labels.long().cpu())
    if not features:
        raise ValueError("batches yielded no images")
    return torch.cat(features), torch.cat(labels) if labels else None


class LinearProbe(nn.Module):
    """Standardisation with frozen training statistics, then a linear classifier: ``[B, D] -> logits [B, C]``."""

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))
        self.linear = nn.Linear(feature_dim, num_classes)
        nn.init.zeros_(self.linear.weight)  # MAE's probe head starts from (near) zero
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.std)


@dataclass
class LinearProbeResult:
    """``top1`` / ``top5`` accuracy (in %) on the evaluation set, ``train_top1`` on the training set, the probe."""

    top1: float
    top5: float
    train_top1: float
    probe: LinearProbe


def _accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return 100.0 * float(hits.float().mean())


def train_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    eval_features: torch.Tensor | None = None,
    eval_labels: torch.Tensor | None = None,
    num_classes: int | None = None,
    epochs: int = 90,
    batch_size: int = 1024,
    learning_rate: float = 1e-2,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> LinearProbeResult:
    """Train a :class:`LinearProbe` by cross-entropy and report top-1 / top-5 accuracy.

    Args:
        train_features / train_labels: ``[N, D]`` features and ``[N]`` labels in ``[0, num_classes)``.
        eval_features / eval_labels: held-out set (the ImageNet validation set in the paper); defaults to the
            training set.
        num_classes: defaults to ``max(label) + 1``.
        epochs: passes over the training set (MAE: 90).
        batch_size / learning_rate / weight_decay: AdamW settings; the learning rate follows a cosine decay.
        seed: seeds the shuffling (the result is deterministic for a given seed).

    >>> x = torch.cat([torch.randn(100, 2) - 4, torch.randn(100, 2) + 4]); y = torch.arange(2).repeat_interleave(100)
    >>> train_linear_probe(x, y, epochs=20, batch_size=50).top1
    100.0
    """
    train_features = torch.as_tensor(train_features).float()
    train_labels = torch.as_tensor(train_labels).long()
    if train_features.ndim != 2 or train_labels.shape != train_features.shape[:1]:
        raise ValueError(
            f"train_features must be [N, D] and train_labels [N], got {list(train_features.shape)} and "
            f"{list(train_labels.shape)}"
        )
    if (eval_features is None) != (eval_labels is None):
        raise ValueError("give both eval_features and eval_labels, or neither")
    if eval_features is None:
        eval_features, eval_labels = train_features, train_labels
    eval_features, eval_labels = torch.as_tensor(eval_features).float(), torch.as_tensor(eval_labels).long()
    num_classes = num_classes or int(max(train_labels.max(), eval_labels.max())) + 1
    if int(train_labels.min()) < 0 or int(train_labels.max()) >= num_classes:
        raise ValueError(f"train_labels must lie in [0, {num_classes})")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")

    probe = LinearProbe(train_features.shape[1], num_classes).to(device)
    probe.mean.copy_(train_features.mean(0))
    probe.std.copy_(train_features.std(0, unbiased=False).clamp_min(1e-6))
    x, y = train_features.to(device), train_labels.to(device)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    probe.train()
    for _ in tqdm(range(epochs), desc="linear probe", leave=False):
        order = torch.randperm(len(x), generator=generator).to(device)
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            loss = F.cross_entropy(probe(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    probe.eval()
    with torch.no_grad():
        train_logits = torch.cat([probe(x[i : i + 65536]) for i in range(0, len(x), 65536)])
        eval_x, eval_y = eval_features.to(device), eval_labels.to(device)
        eval_logits = torch.cat([probe(eval_x[i : i + 65536]) for i in range(0, len(eval_x), 65536)])
    return LinearProbeResult(
        top1=_accuracy(eval_logits, eval_y, 1),
        top5=_accuracy(eval_logits, eval_y, 5),
        train_top1=_accuracy(train_logits, y, 1),
        probe=probe.cpu(),
    )


__all__ = [
    "LinearProbe",
    "LinearProbeResult",
    "extract_probe_features",
    "pooled_token_features",
    "train_linear_probe",
]
