"""Configuration of :class:`~prologue_hf.PrologueARForCausalLM`: a ``LlamaConfig`` over the combined vocabulary.

No ``from __future__ import annotations``: ``@strict`` then checks every field's type on assignment (see
:mod:`~prologue_hf.models.configuration_prologue_tokenizer`).
"""

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig

from ..vocabulary import PrologueVocabulary, ar_vocabulary_fields
from .configuration_prologue_tokenizer import normalize_config_fields
from .remote_code import RemoteCodeConfigMixin

# Paper appendix Table A4 and the official configs (ar/small, base, large, xlarge). The paper's XL row
# (24 x 2048 x 20) contradicts the official config and its own 685M count; the official 32 x 1280 x 20 is used.
AR_PRESETS: dict[str, dict] = {
    "compact": dict(hidden_size=512, num_hidden_layers=10, num_attention_heads=8, tie_word_embeddings=True),
    "B": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "L": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
    "XL": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=20),
}


@strict
class PrologueARConfig(RemoteCodeConfigMixin, LlamaConfig):
    r"""A :class:`transformers.LlamaConfig` whose vocabulary is Prologue's combined id space.

    ``vocab_size`` is derived from the vocabulary fields (see :class:`~prologue_hf.PrologueVocabulary`); passing a
    different one is an error. With ``use_qk_norm=False`` and ``rope_axes_dim=None`` (the defaults) the model is a
    plain Llama: its ``save_pretrained`` folder loads in ``transformers.LlamaForCausalLM``.

    Args:
        visual_vocab_size: V, visual codebook size of the paired tokenizer.
        prologue_vocab_size: P, prologue codebook size.
        num_prologue_tokens: K (0 for the 2D baseline).
        num_visual_tokens: N, visual tokens per image.
        num_classes: real classes C; the null class is ``C`` (its token id is ``vocabulary.null_class_id``).
        use_qk_norm: per-head RMSNorm on queries and keys before RoPE (the official AR has it).
        rope_axes_dim: official multi-axis RoPE layout, e.g. ``[24, 20, 20]``: only the first
            ``rope_axes_dim[0]`` channels of each head rotate (frequencies ``theta^(-2k/axes_dim[0])``), the rest
            stay fixed. ``None`` is Llama's RoPE over the whole head.
        embedding_dropout: dropout on the input embeddings (paper stage 2: 0.1).
        hidden_dropout: dropout on each residual branch (paper stage 2: 0.1).
        tokenizer_identity: free-form string naming the tokenizer the ids came from (config hash or repo id),
            checked against pretokenized datasets.
        intermediate_size: defaults to ``round(hidden_size * 11 / 4)`` (official "11/4" GEGLU ratio).
    """

    model_type = "prologue_ar"

    visual_vocab_size: int = 16384
    prologue_vocab_size: int = 1024
    num_prologue_tokens: int = 16
    num_visual_tokens: int = 256
    num_classes: int = 1000
    use_qk_norm: bool = False
    rope_axes_dim: list[int] | tuple[int, ...] | None = None
    embedding_dropout: float | int = 0.0
    hidden_dropout: float | int = 0.0
    tokenizer_identity: str | None = None
    vocab_size: int | None = None
    hidden_size: int = 768
    intermediate_size: int | None = None
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    hidden_act: str = "gelu_pytorch_tanh"
    max_position_embeddings: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        normalize_config_fields(self)
        vocabulary = self.vocabulary  # also validates the vocabulary fields
        if self.vocab_size is None:
            self.vocab_size = vocabulary.vocab_size
        elif self.vocab_size != vocabulary.vocab_size:
            raise ValueError(
                f"vocab_size ({self.vocab_size}) does not match the combined vocabulary "
                f"(V={self.visual_vocab_size} + P={self.prologue_vocab_size} + EOS + C={self.num_classes} + null = "
                f"{vocabulary.vocab_size})"
            )
        if self.intermediate_size is None:
            self.intermediate_size = round(self.hidden_size * 11 / 4)
        if self.max_position_embeddings is None:
            self.max_position_embeddings = vocabulary.sequence_length
        if self.rope_axes_dim is not None:
            self.rope_axes_dim = list(self.rope_axes_dim)
            head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
            if sum(self.rope_axes_dim) != head_dim or any(a % 2 for a in self.rope_axes_dim):
                raise ValueError(f"rope_axes_dim {self.rope_axes_dim} must be even numbers summing to head_dim {head_dim}")
        super().__post_init__(**kwargs)

    @property
    def vocabulary(self) -> PrologueVocabulary:
        """The :class:`~prologue_hf.PrologueVocabulary` this config describes."""
        return PrologueVocabulary(
            self.visual_vocab_size,
            self.prologue_vocab_size,
            self.num_prologue_tokens,
            self.num_visual_tokens,
            self.num_classes,
        )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PrologueARConfig":
        """Paper / official AR sizes: ``"compact"`` (the ~40M stage-1 AR, 10 x 512, tied embeddings), ``"B"``
        (115M, 12 x 768), ``"L"`` (24 x 1024), ``"XL"`` (685M, 32 x 1280, the official config).

        Vocabulary fields default to the paper's B tokenizer (16K visual, 1K prologue, K=16, N=256, 1000 classes).

        >>> PrologueARConfig.from_preset("B").num_hidden_layers
        12
        """
        if name not in AR_PRESETS:
            raise ValueError(f"unknown AR preset {name!r}; expected one of {sorted(AR_PRESETS)}")
        return cls(**{**AR_PRESETS[name], **overrides})

    @classmethod
    def for_tokenizer(cls, tokenizer_config, num_classes: int, **kwargs) -> "PrologueARConfig":
        """An AR config whose vocabulary matches ``tokenizer_config`` (any tokenizer description:
        :meth:`PrologueVocabulary.from_tokenizer_config`); ``kwargs`` are further fields, and a vocabulary field
        among them must equal the tokenizer's (:func:`~prologue_hf.vocabulary.ar_vocabulary_fields`).

        >>> from prologue_hf.testing import tiny_tokenizer_config
        >>> PrologueARConfig.for_tokenizer(tiny_tokenizer_config(), 10, hidden_size=64, num_hidden_layers=2,
        ...     num_attention_heads=4).vocab_size
        92
        """
        return cls(**ar_vocabulary_fields(tokenizer_config, num_classes, **kwargs))


__all__ = ["PrologueARConfig", "AR_PRESETS"]
