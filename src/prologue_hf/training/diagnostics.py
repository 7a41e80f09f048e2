"""Collapse diagnostics of the prologue tokens (issue 15, Must-show 2): pure functions of one batch.

A Prologue tokenizer can look healthy on reconstruction while its prologue says nothing: the prologue codebook
collapses to a few codes, every image gets the same tuple, and the AR learns nothing from it. These numbers show it
while training (logged every logging step of stage 1 and Post) and in the demo report:

* ``prologue_usage/pos{k}``: distinct codes at prologue position ``k`` in the batch, as a fraction of the codebook;
  ``prologue_usage_mean``: their mean;
* ``prologue_distinct_tuples``: distinct ``K``-tuples in the batch, as a fraction of the batch size;
* ``prologue_p_max_median``: median over tokens of the Prob-STE soft-max's largest probability
  ``max softmax(cos / tau)``; ``prologue_effective_codes_median``: median ``exp(entropy)`` of that soft-max (about how
  many codes receive gradient through Prob-STE per token); ``prologue_top_gap_median``: median ``p1 - p2`` of it;
* ``prologue_label_mi_bits``: the mean over positions of the plug-in mutual information ``I(z_k; label)`` in bits (only
  for labelled batches; biased upwards for small batches: a batch of ``B`` distinct labels caps it at ``log2 B``).

:func:`prologue_collapse_warning` says when the prologue is nearly constant across a batch.
"""

from __future__ import annotations

import math

import torch


def _check_ids(prologue_ids: torch.Tensor, codebook_size: int) -> None:
    if not isinstance(prologue_ids, torch.Tensor) or prologue_ids.ndim != 2 or prologue_ids.is_floating_point():
        raise ValueError("prologue_ids must be an integer tensor [B, K]")
    if not prologue_ids.numel():
        raise ValueError("prologue_ids is empty: no batch to diagnose")
    if int(prologue_ids.min()) < 0 or int(prologue_ids.max()) >= codebook_size:
        raise ValueError(f"prologue_ids must lie in [0, {codebook_size}) (raw prologue codebook ids)")


def per_position_usage(prologue_ids: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """``[K]`` fraction of the codebook used at each position of ``prologue_ids`` ``[B, K]``."""
    _check_ids(prologue_ids, codebook_size)
    return torch.tensor([float(torch.unique(column).numel()) / codebook_size for column in prologue_ids.t()])


def distinct_tuples(prologue_ids: torch.Tensor) -> int:
    """Number of distinct rows (``K``-tuples) of ``prologue_ids`` ``[B, K]``."""
    return int(torch.unique(prologue_ids, dim=0).shape[0])


def softmax_sharpness(logits: torch.Tensor, temperature: float) -> dict[str, float]:
    """Median ``p_max``, ``exp(entropy)`` and ``p1 - p2`` of ``softmax(logits / temperature)`` over all tokens of
    ``logits`` ``[..., codebook_size]`` (cosine similarities, as the prologue quantizer returns them)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.shape[-1] < 2:
        raise ValueError("logits need at least 2 codes")
    scaled = logits.detach().float().reshape(-1, logits.shape[-1]) / temperature
    probs = scaled.softmax(-1)
    entropy = -(probs * scaled.log_softmax(-1)).sum(-1)
    top2 = probs.topk(2, dim=-1).values
    return {
        "p_max_median": float(top2[:, 0].median()),
        "effective_codes_median": float(entropy.exp().median()),
        "top_gap_median": float((top2[:, 0] - top2[:, 1]).median()),
    }


def _entropy_bits(counts: torch.Tensor) -> float:
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * p.log2()).sum())


def mutual_information_bits(codes: torch.Tensor, labels: torch.Tensor) -> float:
    """Plug-in ``I(code; label)`` in bits of two ``[B]`` integer tensors (``H(code) + H(label) - H(code, label)``)."""
    if codes.shape != labels.shape or codes.ndim != 1:
        raise ValueError(f"codes and labels must both be [B]; got {list(codes.shape)} and {list(labels.shape)}")
    _, code_index = torch.unique(codes, return_inverse=True)
    _, label_index = torch.unique(labels, return_inverse=True)
    joint = code_index * (int(label_index.max()) + 1) + label_index
    return max(
        0.0,
        _entropy_bits(torch.bincount(code_index)) + _entropy_bits(torch.bincount(label_index))
        - _entropy_bits(torch.bincount(joint)),
    )


def prologue_diagnostics(
    prologue_ids: torch.Tensor,
    codebook_size: int,
    prologue_logits: torch.Tensor | None = None,
    temperature: float | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, float]:
    """All diagnostics of one batch (names in the module docstring).

    Args:
        prologue_ids: ``[B, K]`` raw prologue ids.
        codebook_size: prologue codebook size ``P``.
        prologue_logits: ``[B, K, P]`` cosine logits (optional: the soft-max statistics need them and ``temperature``).
        temperature: the Prob-STE ``tau`` in use.
        labels: ``[B]`` class ids (entries ``< 0`` = unlabelled are left out of the mutual information).
    """
    usage = per_position_usage(prologue_ids, codebook_size)
    out = {f"prologue_usage/pos{k}": float(u) for k, u in enumerate(usage)}
    out["prologue_usage_mean"] = float(usage.mean())
    out["prologue_distinct_tuples"] = distinct_tuples(prologue_ids) / prologue_ids.shape[0]
    if prologue_logits is not None:
        if temperature is None:
            raise ValueError("temperature is required with prologue_logits")
        if tuple(prologue_logits.shape[:2]) != tuple(prologue_ids.shape):
            raise ValueError(
                f"prologue_logits must be [B, K, P] matching prologue_ids {list(prologue_ids.shape)}, got "
                f"{list(prologue_logits.shape)}"
            )
        stats = softmax_sharpness(prologue_logits, temperature)
        out.update({f"prologue_{k}": v for k, v in stats.items()})
    if labels is not None:
        labels = labels.reshape(-1).to(prologue_ids.device)
        keep = labels >= 0
        if int(keep.sum()) >= 2:
            ids, kept = prologue_ids[keep], labels[keep].long()
            out["prologue_label_mi_bits"] = sum(mutual_information_bits(col, kept) for col in ids.t()) / ids.shape[1]
    return out


def prologue_collapse_warning(prologue_ids: torch.Tensor, dominant_fraction: float = 0.9) -> str | None:
    """A message when the prologue is nearly constant across the batch ``[B, K]`` (one tuple covers at least
    ``dominant_fraction`` of the rows, or every position uses one code), else ``None``. Batches of fewer than 4 rows
    are not judged."""
    batch = prologue_ids.shape[0]
    if batch < 4:
        return None
    _, counts = torch.unique(prologue_ids, dim=0, return_counts=True)
    top = int(counts.max())
    constant_positions = sum(int(torch.unique(col).numel() == 1) for col in prologue_ids.t())
    if top >= math.ceil(dominant_fraction * batch) or constant_positions == prologue_ids.shape[1]:
        return (
            f"prologue collapse: the most frequent prologue tuple covers {top}/{batch} images of the batch and "
            f"{constant_positions}/{prologue_ids.shape[1]} positions use a single code; the AR gets no information from "
            "the prologue (try a larger Prob-STE temperature or a tau schedule, see docs/training.md)"
        )
    return None


def random_feature_softmax_geometry(
    codebook_size: int, codebook_dim: int, temperature: float, num_features: int = 4096, seed: int = 0
) -> dict[str, float]:
    """Prob-STE soft-max statistics on random unit features against a random L2-normalised codebook.

    Both are Gaussian directions (the codebook init scale, N(0, 1) or N(0, 1/z_dim), does not matter after the
    normalisation). This is the geometry at initialisation: how sharp ``softmax(cos / tau)`` is for a
    codebook of ``codebook_size`` codes in ``codebook_dim`` dimensions (see docs/training.md, choosing tau).
    """
    generator = torch.Generator().manual_seed(seed)
    codebook = torch.randn(codebook_size, codebook_dim, generator=generator)
    features = torch.randn(num_features, codebook_dim, generator=generator)
    logits = torch.nn.functional.normalize(features, dim=-1) @ torch.nn.functional.normalize(codebook, dim=-1).t()
    return softmax_sharpness(logits, temperature)


def temperature_for_p_max(
    target_p_max: float, codebook_size: int, codebook_dim: int, num_features: int = 4096, seed: int = 0
) -> float:
    """The ``tau`` at which :func:`random_feature_softmax_geometry` gives median ``p_max = target_p_max`` (bisection in
    ``log tau``; ``p_max`` falls monotonically as ``tau`` grows)."""
    if not 1.0 / codebook_size < target_p_max < 1.0:
        raise ValueError(f"target_p_max must lie in (1/{codebook_size}, 1), got {target_p_max}")
    low, high = math.log(1e-4), math.log(1e2)
    for _ in range(40):
        middle = (low + high) / 2
        p = random_feature_softmax_geometry(codebook_size, codebook_dim, math.exp(middle), num_features, seed)["p_max_median"]
        low, high = (middle, high) if p > target_p_max else (low, middle)
    return math.exp((low + high) / 2)


__all__ = [
    "distinct_tuples",
    "model_prologue_diagnostics",
    "mutual_information_bits",
    "per_position_usage",
    "prologue_collapse_warning",
    "prologue_diagnostics",
    "random_feature_softmax_geometry",
    "softmax_sharpness",
    "temperature_for_p_max",
]


@torch.no_grad()
def model_prologue_diagnostics(
    model: torch.nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor | None = None
) -> tuple[dict[str, float], str | None]:
    """:func:`prologue_diagnostics` and :func:`prologue_collapse_warning` of a batch ``[B, C, H, W]`` encoded by
    ``model`` (a Prologue tokenizer or a Prologue-Post model: anything whose ``encode`` returns ``prologue_ids`` and
    ``prologue_logits`` and that has a ``prologue_quantizer``). ``({}, None)`` for a model without prologue tokens."""
    quantizer = getattr(model, "prologue_quantizer", None)
    if quantizer is None:
        return {}, None
    encoded = model.encode(pixel_values)
    stats = prologue_diagnostics(
        encoded.prologue_ids, quantizer.codebook_size, encoded.prologue_logits, quantizer.temperature, labels
    )
    return stats, prologue_collapse_warning(encoded.prologue_ids)
