"""The combined id space of the Prologue AR model: the one place that knows the id layout.

Layout (the first ids follow the official order, so official checkpoints convert by copying rows)::

    [0, V)                   visual ids             (V = visual codebook size)
    [V, V + P)               prologue ids           (P = prologue codebook size)
    V + P                    EOS, between prologue and visual tokens (only when K > 0)
    [class_offset, +C)       class tokens, one per real class
    class_offset + C         the null (unconditional) class, used for classifier-free guidance

An AR training sequence is ``[class][prologue x K][EOS][visual x N]`` (``1 + K + 1 + N`` ids); the model predicts
everything after the class token. With K = 0 (the 2D baseline) it is ``[class][visual x N]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PrologueVocabulary:
    """Offsets and helpers of the combined vocabulary.

    Args:
        visual_vocab_size: V, visual codebook size.
        prologue_vocab_size: P, prologue codebook size (ignored, and the range empty, when K = 0).
        num_prologue_tokens: K, prologue tokens per image.
        num_visual_tokens: N, visual tokens per image.
        num_classes: C, real classes (the null class is added on top).

    >>> vocab = PrologueVocabulary(64, 16, 4, 16, 10)
    >>> vocab.eos_token_id, vocab.null_class_id, vocab.vocab_size
    (80, 91, 92)
    """

    visual_vocab_size: int
    prologue_vocab_size: int
    num_prologue_tokens: int
    num_visual_tokens: int
    num_classes: int

    def __post_init__(self):
        for name in ("visual_vocab_size", "num_visual_tokens", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_prologue_tokens < 0:
            raise ValueError(f"num_prologue_tokens must be >= 0, got {self.num_prologue_tokens}")
        if self.num_prologue_tokens and self.prologue_vocab_size < 1:
            raise ValueError("prologue_vocab_size must be >= 1 when num_prologue_tokens > 0")

    # ---------------------------------------------------------------- offsets
    @property
    def has_prologue(self) -> bool:
        return self.num_prologue_tokens > 0

    @property
    def prologue_offset(self) -> int:
        return self.visual_vocab_size

    @property
    def eos_token_id(self) -> int | None:
        return self.visual_vocab_size + self.prologue_vocab_size if self.has_prologue else None

    @property
    def class_offset(self) -> int:
        if self.has_prologue:
            return self.visual_vocab_size + self.prologue_vocab_size + 1
        return self.visual_vocab_size

    @property
    def null_class_id(self) -> int:
        return self.class_offset + self.num_classes

    @property
    def vocab_size(self) -> int:
        return self.null_class_id + 1

    @property
    def num_generated_tokens(self) -> int:
        """Tokens the AR generates after the class token: ``K + 1 + N`` (or ``N`` without prologue)."""
        return self.num_prologue_tokens + int(self.has_prologue) + self.num_visual_tokens

    @property
    def sequence_length(self) -> int:
        """Length of a full training sequence, class token included."""
        return 1 + self.num_generated_tokens

    @property
    def visual_start(self) -> int:
        """Index of the first visual token inside the generated tokens (after the class token)."""
        return self.num_prologue_tokens + int(self.has_prologue)

    # ---------------------------------------------------------------- conversions
    def class_token_ids(self, class_labels: torch.Tensor | list[int], allow_null: bool = True) -> torch.Tensor:
        """Class labels ``[B]`` in ``[0, C)`` (``C`` means the null class when ``allow_null``) -> token ids ``[B]``."""
        labels = torch.as_tensor(class_labels, dtype=torch.long)
        upper = self.num_classes + int(allow_null)
        if labels.ndim != 1:
            raise ValueError(f"class_labels must be 1-D, got shape {list(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= upper):
            raise ValueError(
                f"class_labels must lie in [0, {self.num_classes}) (or be {self.num_classes} for the null class); "
                f"got values in [{int(labels.min())}, {int(labels.max())}]"
            )
        return labels + self.class_offset

    def _check_ids(self, name: str, ids: torch.Tensor, length: int, upper: int) -> None:
        if ids.ndim != 2 or ids.shape[1] != length:
            raise ValueError(f"{name} must have shape [B, {length}], got {list(ids.shape)}")
        if ids.is_floating_point():
            raise ValueError(f"{name} must be an integer tensor, got {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= upper):
            raise ValueError(f"{name} must lie in [0, {upper}); got values in [{int(ids.min())}, {int(ids.max())}]")

    def check_prologue_ids(self, prologue_ids: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``prologue_ids`` is integer ``[B, K]`` in ``[0, P)``."""
        self._check_ids("prologue_ids", prologue_ids, self.num_prologue_tokens, self.prologue_vocab_size)

    def check_visual_ids(self, visual_ids: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``visual_ids`` is integer ``[B, N]`` in ``[0, V)``."""
        self._check_ids("visual_ids", visual_ids, self.num_visual_tokens, self.visual_vocab_size)

    def build_sequence(
        self,
        class_labels: torch.Tensor | list[int],
        visual_ids: torch.Tensor,
        prologue_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokenizer ids -> AR ids ``[B, 1 + K + 1 + N]`` = ``[class][prologue + V][EOS][visual]``.

        Args:
            class_labels: ``[B]`` labels in ``[0, C]`` (``C`` = null class).
            visual_ids: ``[B, N]`` raw visual ids in ``[0, V)``.
            prologue_ids: ``[B, K]`` raw prologue ids in ``[0, P)`` (required iff K > 0).
        """
        self.check_visual_ids(visual_ids)
        class_ids = self.class_token_ids(class_labels).to(visual_ids.device)
        if class_ids.shape[0] != visual_ids.shape[0]:
            raise ValueError(f"class_labels has {class_ids.shape[0]} entries but visual_ids has {visual_ids.shape[0]} rows")
        parts = [class_ids[:, None]]
        if self.has_prologue:
            if prologue_ids is None:
                raise ValueError(f"prologue_ids [B, {self.num_prologue_tokens}] is required: this vocabulary has K > 0")
            self.check_prologue_ids(prologue_ids)
            eos = torch.full_like(visual_ids[:, :1], self.eos_token_id)
            parts += [prologue_ids.long() + self.prologue_offset, eos]
        elif prologue_ids is not None and prologue_ids.numel():
            raise ValueError("prologue_ids given, but this vocabulary has num_prologue_tokens=0")
        parts.append(visual_ids.long())
        return torch.cat(parts, dim=1)

    def split(self, generated_ids: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Generated ids ``[B, K + 1 + N]`` (or a full sequence with the class token in front) ->
        ``(prologue_ids [B, K] raw or None, visual_ids [B, N] raw)``."""
        if generated_ids.shape[1] == self.sequence_length:
            generated_ids = generated_ids[:, 1:]
        if generated_ids.shape[1] != self.num_generated_tokens:
            raise ValueError(
                f"generated_ids must have {self.num_generated_tokens} (or {self.sequence_length} with the class "
                f"token) columns, got {generated_ids.shape[1]}"
            )
        prologue = generated_ids[:, : self.num_prologue_tokens] - self.prologue_offset if self.has_prologue else None
        return prologue, generated_ids[:, self.visual_start :]

    # ---------------------------------------------------------------- segment masks
    def allowed_tokens(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool ``[K + 1 + N, vocab_size]``: which ids may be generated at each step (prologue ids, then EOS,
        then visual ids), the official ``build_ar_logit_mask``."""
        allowed = torch.zeros(self.num_generated_tokens, self.vocab_size, dtype=torch.bool, device=device)
        k = self.num_prologue_tokens
        if self.has_prologue:
            allowed[:k, self.prologue_offset : self.prologue_offset + self.prologue_vocab_size] = True
            allowed[k, self.eos_token_id] = True
        allowed[self.visual_start :, : self.visual_vocab_size] = True
        return allowed

    def step_id_ranges(self) -> list[tuple[int, int]]:
        """Per generated step, the half-open id range ``(lo, hi)`` of :meth:`allowed_tokens` (each segment's ids are
        contiguous): the prologue ids for the K prologue steps, the EOS id, then the visual ids."""
        k = self.num_prologue_tokens
        prologue = (self.prologue_offset, self.prologue_offset + self.prologue_vocab_size)
        eos = [(self.eos_token_id, self.eos_token_id + 1)] if self.has_prologue else []
        return [prologue] * k + eos + [(0, self.visual_vocab_size)] * (self.num_generated_tokens - self.visual_start)

    def logit_mask(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Additive ``[K + 1 + N, vocab_size]`` mask: 0 where allowed, ``-inf`` elsewhere."""
        mask = torch.zeros(self.num_generated_tokens, self.vocab_size, dtype=dtype, device=device)
        return mask.masked_fill_(~self.allowed_tokens(device), float("-inf"))

    def segment_ids(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``[K + 1 + N]`` segment of each generated position: 0 prologue, 1 EOS, 2 visual."""
        segments = torch.full((self.num_generated_tokens,), 2, dtype=torch.long, device=device)
        if self.has_prologue:
            segments[: self.num_prologue_tokens] = 0
            segments[self.num_prologue_tokens] = 1
        return segments


__all__ = ["PrologueVocabulary"]
