"""prologue-hf: Prologue (arXiv 2605.06137) for transformers / diffusers users.

Public API; importing the package registers the configs and models with the transformers ``Auto*`` classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .models import (
    AR_PRESETS,
    L2VectorQuantizer,
    ProbSTEQuantizer,
    PrologueARConfig,
    PrologueARForCausalLM,
    PrologueARModel,
    PrologueTokenizerConfig,
    PrologueTokenizerDecoderOutput,
    PrologueTokenizerEncoderOutput,
    PrologueTokenizerModel,
    PrologueTokenizerOutput,
    QuantizerOutput,
)
from .vocabulary import PrologueVocabulary

__version__ = "0.1.0"

AutoConfig.register(PrologueTokenizerConfig.model_type, PrologueTokenizerConfig, exist_ok=True)
AutoConfig.register(PrologueARConfig.model_type, PrologueARConfig, exist_ok=True)
AutoModel.register(PrologueTokenizerConfig, PrologueTokenizerModel, exist_ok=True)
AutoModel.register(PrologueARConfig, PrologueARModel, exist_ok=True)
AutoModelForCausalLM.register(PrologueARConfig, PrologueARForCausalLM, exist_ok=True)


def check_compatible(tokenizer_config: PrologueTokenizerConfig, ar_config: PrologueARConfig) -> None:
    """Raise ``ValueError`` unless the AR's vocabulary fits the tokenizer's ids (codebooks, K, N)."""
    pairs = {
        "visual_vocab_size / visual_codebook_size": (ar_config.visual_vocab_size, tokenizer_config.visual_codebook_size),
        "num_prologue_tokens": (ar_config.num_prologue_tokens, tokenizer_config.num_prologue_tokens),
        "num_visual_tokens": (ar_config.num_visual_tokens, tokenizer_config.num_visual_tokens),
    }
    if tokenizer_config.num_prologue_tokens:
        pairs["prologue_vocab_size / prologue_codebook_size"] = (
            ar_config.prologue_vocab_size,
            tokenizer_config.prologue_codebook_size,
        )
    mismatched = {k: v for k, v in pairs.items() if v[0] != v[1]}
    if mismatched:
        detail = "; ".join(f"{k}: AR {a} vs tokenizer {t}" for k, (a, t) in mismatched.items())
        raise ValueError(f"tokenizer and AR vocabularies do not match ({detail})")


__all__ = [
    "AR_PRESETS",
    "L2VectorQuantizer",
    "PrologueARConfig",
    "PrologueARForCausalLM",
    "PrologueARModel",
    "PrologueTokenizerConfig",
    "PrologueTokenizerDecoderOutput",
    "PrologueTokenizerEncoderOutput",
    "PrologueTokenizerModel",
    "PrologueTokenizerOutput",
    "PrologueVocabulary",
    "ProbSTEQuantizer",
    "QuantizerOutput",
    "check_compatible",
]
