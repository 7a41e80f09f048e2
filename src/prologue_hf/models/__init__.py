from .configuration_prologue_ar import AR_PRESETS, PrologueARConfig
from .configuration_prologue_tokenizer import PrologueTokenizerConfig
from .modeling_prologue_ar import PrologueARForCausalLM, PrologueARModel
from .modeling_prologue_tokenizer import (
    PrologueTokenizerDecoderOutput,
    PrologueTokenizerEncoderOutput,
    PrologueTokenizerModel,
    PrologueTokenizerOutput,
)
from .quantizers import L2VectorQuantizer, ProbSTEQuantizer, QuantizerOutput

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
    "ProbSTEQuantizer",
    "QuantizerOutput",
]
