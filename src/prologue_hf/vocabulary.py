"""The combined id space of the Prologue AR model: the one place that knows the id layout.

Layout (the first ids follow the official order, so official checkpoints convert by copying rows)::

    [0, V)                   visual ids             (V = visual codebook size)
    [V, V + P)               prologue ids           (P = prologue codebook size)
    V + P                    EOS, between prologue and visual tokens (only when K > 0)
    [class_offset, +C)       class tokens, one per real class
    class_offset + C         the null (unconditional) class, used for classifier-free guidance

An AR training sequence is ``[class][prologue x K][EOS][visual x N]`` (``1 + K + 1 + N`` ids); the model predicts
everything after the class token. With K = 0 (the 2D baseline) it is ``[class][visual x N]``.

The tokenizer <-> AR contract also lives here, once: a tokenizer decides V, P, K and N; the AR's config must carry the
same values. :meth:`PrologueVocabulary.from_tokenizer_config` reads them from any tokenizer description,
:func:`ar_vocabulary_fields` turns them into :class:`~prologue_hf.PrologueARConfig` keyword arguments (with one
precedence rule for overrides) and :func:`check_compatible` checks an AR config against a tokenizer.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch

# Names of the generated segments, in id-layout order (``segment_ids`` numbers them 0, 1, 2).
SEGMENTS = ("prologue", "eos", "visual")
# The fields a tokenizer decides, as a tokenizer config spells them and as an AR config spells them.
_TOKENIZER_FIELDS = ("visual_codebook_size", "prologue_codebook_size", "num_prologue_tokens", "num_visual_tokens")
_AR_FIELDS = ("visual_vocab_size", "prologue_vocab_size", "num_prologue_tokens", "num_visual_tokens")


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

    # ---------------------------------------------------------------- the tokenizer <-> AR contract
    @classmethod
    def from_tokenizer_config(cls, tokenizer_config: Any, num_classes: int) -> PrologueVocabulary:
        """The vocabulary of an AR over the ids of ``tokenizer_config`` with ``num_classes`` real classes.

        ``tokenizer_config`` is anything that describes a tokenizer's ids:

        * a :class:`~prologue_hf.PrologueTokenizerConfig` or :class:`~prologue_hf.ProloguePostConfig` (fields
          ``visual_codebook_size``, ``prologue_codebook_size``, ``num_prologue_tokens``, ``num_visual_tokens``);
        * a frozen tokenizer's :class:`~prologue_hf.models.visual_tokenizers.VisualTokenizerAdapter` (the same four
          fields; K = 0, as a frozen VQ model has no prologue);
        * a record spelled as an AR config (``visual_vocab_size``, ``prologue_vocab_size``, ...): a
          :class:`~prologue_hf.PrologueARConfig`, a pretokenized dataset's info, or a :class:`PrologueVocabulary`;
        * a model whose ``config`` is one of the above.

        With K = 0 the prologue codebook takes no ids; its size is carried over as given.

        >>> from prologue_hf.testing import tiny_tokenizer_config
        >>> PrologueVocabulary.from_tokenizer_config(tiny_tokenizer_config(), num_classes=10).vocab_size
        92
        """
        values = _tokenizer_fields(tokenizer_config)
        return cls(*values, num_classes=_as_count("num_classes", num_classes))

    def ar_config_fields(self) -> dict[str, int]:
        """This vocabulary as :class:`~prologue_hf.PrologueARConfig` keyword arguments (V, P, K, N, C)."""
        return dict(
            visual_vocab_size=self.visual_vocab_size,
            prologue_vocab_size=self.prologue_vocab_size,
            num_prologue_tokens=self.num_prologue_tokens,
            num_visual_tokens=self.num_visual_tokens,
            num_classes=self.num_classes,
        )

    def tokenizer_decided_fields(self) -> dict[str, int]:
        """The AR config fields the tokenizer's ids fix: V, K, N, and P when K > 0 (with K = 0 no id is a prologue
        id, so P does not matter). :func:`check_compatible` compares exactly these."""
        fields = dict(
            visual_vocab_size=self.visual_vocab_size,
            num_prologue_tokens=self.num_prologue_tokens,
            num_visual_tokens=self.num_visual_tokens,
        )
        if self.has_prologue:
            fields["prologue_vocab_size"] = self.prologue_vocab_size
        return fields

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

    @property
    def visual_id_slice(self) -> slice:
        """The visual ids ``[0, V)`` of the combined vocabulary, e.g. the visual rows of the embedding matrix."""
        return slice(0, self.visual_vocab_size)

    @property
    def prologue_id_slice(self) -> slice:
        """The prologue ids ``[V, V + P)`` of the combined vocabulary (empty when K = 0)."""
        return slice(self.prologue_offset, self.prologue_offset + self.prologue_vocab_size * int(self.has_prologue))

    @property
    def segment_positions(self) -> dict[str, slice]:
        """Positions of each segment among the ``K + 1 + N`` generated tokens (the class token not counted):
        ``{"prologue": [0, K), "eos": [K, K + 1), "visual": [K + 1, K + 1 + N)}``; a segment that does not exist
        (K = 0) is left out. Index a ``[B, K + 1 + N]`` per-step tensor (next-token losses, logits) with them."""
        k = self.num_prologue_tokens
        positions = {"prologue": slice(0, k), "eos": slice(k, k + 1)} if self.has_prologue else {}
        positions["visual"] = slice(self.visual_start, self.num_generated_tokens)
        return positions

    # ---------------------------------------------------------------- conversions
    def class_token_ids(self, class_labels: torch.Tensor | list[int], allow_null: bool = True) -> torch.Tensor:
        """Class labels ``[B]`` in ``[0, C)`` (``C`` means the null class when ``allow_null``) -> token ids ``[B]``.

        Labels must be integers: a float label (``1.7``) or a bool is refused, not truncated to another class.
        """
        labels = torch.as_tensor(class_labels)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(
                f"class_labels must be integer class ids, got dtype {labels.dtype} (values {labels.flatten()[:4].tolist()}); "
                "a float label would be truncated to another class, a bool read as 0 or 1"
            )
        labels = labels.long()
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
    def _segment_id_slices(self) -> dict[str, slice]:
        eos = self.eos_token_id
        return {"prologue": self.prologue_id_slice, "eos": slice(eos, None if eos is None else eos + 1),
                "visual": self.visual_id_slice}

    def allowed_tokens(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool ``[K + 1 + N, vocab_size]``: which ids may be generated at each step (prologue ids, then EOS,
        then visual ids), the official ``build_ar_logit_mask``."""
        allowed = torch.zeros(self.num_generated_tokens, self.vocab_size, dtype=torch.bool, device=device)
        ids = self._segment_id_slices()
        for name, positions in self.segment_positions.items():
            allowed[positions, ids[name]] = True
        return allowed

    def step_id_ranges(self) -> list[tuple[int, int]]:
        """Per generated step, the half-open id range ``(lo, hi)`` of :meth:`allowed_tokens` (each segment's ids are
        contiguous): the prologue ids for the K prologue steps, the EOS id, then the visual ids."""
        ids = self._segment_id_slices()
        ranges = []
        for name, positions in self.segment_positions.items():
            ranges += [(ids[name].start, ids[name].stop)] * (positions.stop - positions.start)
        return ranges

    def logit_mask(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Additive ``[K + 1 + N, vocab_size]`` mask: 0 where allowed, ``-inf`` elsewhere."""
        mask = torch.zeros(self.num_generated_tokens, self.vocab_size, dtype=dtype, device=device)
        return mask.masked_fill_(~self.allowed_tokens(device), float("-inf"))

    def segment_ids(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``[K + 1 + N]`` segment of each generated position: its index in :data:`SEGMENTS` (0 prologue, 1 EOS,
        2 visual)."""
        segments = torch.empty(self.num_generated_tokens, dtype=torch.long, device=device)
        for name, positions in self.segment_positions.items():
            segments[positions] = SEGMENTS.index(name)
        return segments


# ==================================================================================== the tokenizer <-> AR contract
def _as_count(name: str, value: Any) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _tokenizer_fields(source: Any) -> tuple[int, int, int, int]:
    """``(V, P, K, N)`` of a tokenizer description (see :meth:`PrologueVocabulary.from_tokenizer_config`)."""
    for names in (_TOKENIZER_FIELDS, _AR_FIELDS):
        if all(hasattr(source, name) for name in names):
            values = tuple(getattr(source, name) for name in names)
            return tuple(_as_count(f"{type(source).__name__}.{n}", v) for n, v in zip(names, values))
    config = getattr(source, "config", None)
    if config is not None and config is not source:
        return _tokenizer_fields(config)
    raise ValueError(
        f"cannot read a vocabulary from {type(source).__name__}: expected a tokenizer config (fields "
        f"{', '.join(_TOKENIZER_FIELDS)}), a VisualTokenizerAdapter (wrap a frozen VQ model with adapter_for_model), "
        f"or a record with the AR config fields {', '.join(_AR_FIELDS)}"
    )


def _describe(source: Any) -> str:
    """``source``'s ids in words, for error messages (kind, V, N and its grid when known, K, P)."""
    visual, prologue, k, n = _tokenizer_fields(source)
    config = getattr(source, "config", source)
    kind = type(source).__name__
    frozen = getattr(config, "visual_tokenizer", None)
    if isinstance(frozen, dict) and "adapter_type" in frozen:
        kind += f" over a frozen {frozen['adapter_type']} tokenizer"
    grid = getattr(source, "grid_shape", None) or (getattr(config, "visual_grid_size", None),) * 2
    if grid[0] is None and getattr(config, "tokenizer_type", "1d") != "1d":
        grid = (getattr(config, "grid_size", None),) * 2
    n_text = f"N={n} visual tokens" + (f" ({grid[0]}x{grid[1]} grid)" if grid[0] is not None else "")
    k_text = f", K={k} prologue tokens of P={prologue} codes" if k else ", no prologue tokens"
    return f"{kind}: V={visual} visual codes, {n_text}{k_text}"


def ar_vocabulary_fields(tokenizer_config: Any, num_classes: int | None = None, **overrides: Any) -> dict[str, Any]:
    """The :class:`~prologue_hf.PrologueARConfig` keyword arguments for an AR over ``tokenizer_config``'s ids,
    merged with ``overrides``.

    The tokenizer decides ``visual_vocab_size``, ``num_prologue_tokens``, ``num_visual_tokens`` and, when K > 0,
    ``prologue_vocab_size``; ``num_classes`` is an argument of its own (``PrologueARConfig`` derives ``vocab_size``
    from them all and checks a given one). The one precedence rule: an override of a field the tokenizer decides must
    equal the tokenizer's value (else ``ValueError`` naming the field and both values), so a caller can neither
    silently change nor be silently overruled on what the tokenizer fixed. Every other override (sizes, dropouts,
    ``tokenizer_identity``, and ``prologue_vocab_size`` when K = 0) passes through untouched.

    Args:
        tokenizer_config: a tokenizer description (see :meth:`PrologueVocabulary.from_tokenizer_config`).
        num_classes: real classes C; default ``tokenizer_config.num_classes`` when it records one (a pretokenized
            dataset's info, an AR config), else required.
        overrides: further ``PrologueARConfig`` fields.

    >>> from prologue_hf.testing import tiny_tokenizer_config
    >>> fields = ar_vocabulary_fields(tiny_tokenizer_config(), 10, hidden_size=64)
    >>> fields["visual_vocab_size"], fields["num_prologue_tokens"], fields["hidden_size"]
    (64, 4, 64)
    >>> ar_vocabulary_fields(tiny_tokenizer_config(), 10, num_visual_tokens=64)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: num_visual_tokens=64 was passed, but the tokenizer decides num_visual_tokens=16 ...
    """
    if num_classes is None:
        num_classes = getattr(tokenizer_config, "num_classes", None)
        if num_classes is None:
            raise ValueError(f"num_classes is required: {type(tokenizer_config).__name__} records no number of classes")
    vocabulary = PrologueVocabulary.from_tokenizer_config(tokenizer_config, num_classes)
    decided = vocabulary.tokenizer_decided_fields()
    for name, value in overrides.items():
        if name in decided and value != decided[name]:
            raise ValueError(
                f"{name}={value!r} was passed, but the tokenizer decides {name}={decided[name]!r} "
                f"({_describe(tokenizer_config)}); drop the override or change the tokenizer"
            )
    return {**vocabulary.ar_config_fields(), **overrides}


def check_compatible(tokenizer_config: Any, ar_config: Any) -> None:
    """Raise ``ValueError`` unless an AR with ``ar_config`` models ``tokenizer_config``'s ids.

    Compares the fields :meth:`PrologueVocabulary.tokenizer_decided_fields` lists (V, K, N, and P when K > 0); the
    message names each mismatched field with both values and describes the tokenizer.

    Args:
        tokenizer_config: a tokenizer description (see :meth:`PrologueVocabulary.from_tokenizer_config`).
        ar_config: a :class:`~prologue_hf.PrologueARConfig` (or an AR model, or anything with its vocabulary
            fields).
    """
    tokenizer = PrologueVocabulary(*_tokenizer_fields(tokenizer_config), num_classes=1).tokenizer_decided_fields()
    ar = dict(zip(_AR_FIELDS, _tokenizer_fields(ar_config)))
    mismatched = {name: (ar[name], value) for name, value in tokenizer.items() if ar[name] != value}
    if mismatched:
        detail = "; ".join(f"{name}: AR {a} vs tokenizer {t}" for name, (a, t) in mismatched.items())
        raise ValueError(f"tokenizer and AR vocabularies do not match ({detail}); the tokenizer is {_describe(tokenizer_config)}")


__all__ = ["PrologueVocabulary", "SEGMENTS", "ar_vocabulary_fields", "check_compatible"]
