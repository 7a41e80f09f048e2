"""The last stage of a sampling step: top-k, top-p (nucleus) and one categorical draw per row.

Pure functions on ``[R, V]`` float logits / probabilities, used by :func:`~prologue_hf.pipelines.generate_ids`.
"""

from __future__ import annotations

import torch


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Set every logit below the ``top_k``-th largest of its row to ``-inf`` (``top_k <= 0``: unchanged).

    ``logits``: ``[R, V]``. Ties with the k-th value are kept. Rows keep at least one finite entry whenever they had
    one, so the softmax never sees an all ``-inf`` row.
    """
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    threshold = torch.topk(logits, top_k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < threshold, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of largest logits whose probability mass reaches ``top_p``.

    ``logits``: ``[R, V]``; ``top_p >= 1`` returns them unchanged. The most likely token is always kept, and masked
    (``-inf``) entries have zero mass, so no NaN can appear.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    remove_sorted = mass_before >= top_p
    remove_sorted[:, 0] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))



def draw_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``probs`` ``[R, V]`` (rows sum to 1, zeros allowed) -> ids ``[R]``, by inverting the CDF.

    Same distribution as ``torch.multinomial(probs, 1)`` and reproducible under ``generator``, but it uses one uniform
    per row instead of one exponential per vocabulary entry (much cheaper at 18k ids, see ``docs/benchmarks.md``).
    ``right=True`` returns the first index whose cumulative mass *exceeds* ``u``, so a zero-probability (masked) id
    is never drawn, even for ``u = 0``; ``u`` is scaled by the row total so float rounding cannot run past the end.
    """
    cdf = probs.double().cumsum(dim=-1)  # float64: rounding over ~2^14 ids stays far below any probability used
    device = generator.device if generator is not None else cdf.device
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=device, dtype=torch.float64).to(cdf.device)
    ids = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0]
    return ids.clamp_(max=probs.shape[-1] - 1)



def filter_and_draw(
    logits: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Final logits ``[R, V]`` -> ids ``[R]``: top-k, then top-p, then one categorical draw (greedy = ``top_k=1``)."""
    logits = top_p_filter(top_k_filter(logits, top_k), top_p)
    return draw_categorical(logits.softmax(dim=-1), generator)


__all__ = ["draw_categorical", "filter_and_draw", "top_k_filter", "top_p_filter"]
