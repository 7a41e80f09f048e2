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



def _uniforms(rows: int, generator: torch.Generator | list[torch.Generator] | None, device) -> torch.Tensor:
    """``[rows, 1]`` float64 uniforms: from ``generator`` (or the global RNG), or row ``i`` from ``generator[i]``."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != rows:
            raise ValueError(f"generator is a list of {len(generator)} generators; expected one per row ({rows})")
        return torch.cat([_uniforms(1, g, device) for g in generator])
    source = generator.device if generator is not None else device
    return torch.rand(rows, 1, generator=generator, device=source, dtype=torch.float64).to(device)


def draw_categorical(
    probs: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None
) -> torch.Tensor:
    """One draw per row of ``probs`` ``[R, V]`` (rows sum to 1, zeros allowed) -> ids ``[R]``, by inverting the CDF.

    ``generator`` may be a list of ``R`` generators: row ``i`` then takes its uniform from ``generator[i]`` alone.

    Same distribution as ``torch.multinomial(probs, 1)`` and reproducible under ``generator``, but it uses one uniform
    per row instead of one exponential per vocabulary entry (much cheaper at 18k ids, see ``docs/benchmarks.md``).
    ``right=True`` returns the first index whose cumulative mass *exceeds* ``u``, so a zero-probability (masked) id
    is never drawn, even for ``u = 0``; ``u`` is scaled by the row total so float rounding cannot run past the end.
    """
    cdf = probs.double().cumsum(dim=-1)  # float64: rounding over ~2^14 ids stays far below any probability used
    u = _uniforms(cdf.shape[0], generator, cdf.device)
    ids = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0]
    return ids.clamp_(max=probs.shape[-1] - 1)



def filter_and_draw(
    logits: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator | list[torch.Generator] | None = None
) -> torch.Tensor:
    """Final logits ``[R, V]`` -> ids ``[R]``: top-k, then top-p, then one categorical draw (greedy = ``top_k=1``)."""
    logits = top_p_filter(top_k_filter(logits, top_k), top_p)
    return draw_categorical(logits.softmax(dim=-1), generator)


__all__ = ["draw_categorical", "filter_and_draw", "top_k_filter", "top_p_filter"]
