"""The sampler's KV cache: one buffer per layer, allocated once, written by position, read as views.

Why not one of transformers' caches: ``DynamicCache`` concatenates, copying the whole cache on every step (up to
~1.3 GB per step at 64 rows for the B AR); ``StaticCache`` hands the attention the full ``max_cache_len`` keys with a
padding mask on every step, so a run's attention reads twice the keys / values it needs on average (the cache read
is ~30% of a B step at 16 rows, ``docs/benchmarks.md``). :class:`PreallocatedCache` keeps both properties that matter
here: no per-step allocation and attention over exactly the filled positions, with no mask.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class PreallocatedLayer(CacheLayerMixin):
    """One decoder layer's keys and values in buffers ``[R, kv_heads, max_length, head_dim]``.

    ``update`` copies the new positions into the next free slots and returns views of the filled part, which the
    attention reads as a plain (unpadded) prefix.
    """

    def __init__(self, max_length: int):
        super().__init__()
        self.max_length = max_length
        self.length = 0
        self._keys = self._values = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        rows, heads = key_states.shape[:2]
        self._keys = key_states.new_empty(rows, heads, self.max_length, key_states.shape[-1])
        self._values = value_states.new_empty(rows, heads, self.max_length, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions, asked to store {end}")
        self._keys[:, :, self.length : end].copy_(key_states)
        self._values[:, :, self.length : end].copy_(value_states)
        self.length = end
        self._refresh_views()
        return self.keys, self.values

    def _refresh_views(self) -> None:
        self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.max_length

    def reset(self) -> None:
        self.length = 0
        self.keys = self.values = self._keys = self._values = None
        self.is_initialized = False

    def batch_select_indices(self, indices: torch.Tensor | slice) -> None:
        """Keep the batch rows ``indices``; a ``slice`` keeps them as a view (batch is the outermost dimension, so
        the sampler drops the unconditional half without copying)."""
        if self.is_initialized:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self._refresh_views()


class PreallocatedCache(Cache):
    """A :class:`transformers.Cache` of :class:`PreallocatedLayer` s, one per decoder layer.

    >>> cache = PreallocatedCache(num_layers=2, max_length=21)
    >>> cache.get_seq_length()
    0
    """

    def __init__(self, num_layers: int, max_length: int):
        super().__init__(layers=[PreallocatedLayer(max_length) for _ in range(num_layers)])


__all__ = ["PreallocatedCache", "PreallocatedLayer"]
