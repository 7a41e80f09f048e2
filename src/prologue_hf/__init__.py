"""prologue-hf: Prologue (arXiv 2605.06137) for transformers / diffusers users.

Importing the package registers the configs and models with the transformers ``Auto*`` classes. The models, configs
and vocabulary are imported eagerly; the pipeline, training, conversion and evaluation names load on first use (they
pull in diffusers / datasets), so ``import prologue_hf`` stays light.
"""

from __future__ import annotations

import importlib

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
from .models.configuration_prologue_post import ProloguePostConfig
from .models.discriminator import PrologueDiscriminator, PrologueDiscriminatorConfig
from .models.modeling_prologue_post import ProloguePostEncoderOutput, ProloguePostModel
from .vocabulary import PrologueVocabulary

__version__ = "0.1.0"

AutoConfig.register(PrologueTokenizerConfig.model_type, PrologueTokenizerConfig, exist_ok=True)
AutoConfig.register(PrologueARConfig.model_type, PrologueARConfig, exist_ok=True)
AutoConfig.register(ProloguePostConfig.model_type, ProloguePostConfig, exist_ok=True)
AutoConfig.register(PrologueDiscriminatorConfig.model_type, PrologueDiscriminatorConfig, exist_ok=True)
AutoModel.register(PrologueTokenizerConfig, PrologueTokenizerModel, exist_ok=True)
AutoModel.register(PrologueARConfig, PrologueARModel, exist_ok=True)
AutoModel.register(ProloguePostConfig, ProloguePostModel, exist_ok=True)
AutoModel.register(PrologueDiscriminatorConfig, PrologueDiscriminator, exist_ok=True)
AutoModelForCausalLM.register(PrologueARConfig, PrologueARForCausalLM, exist_ok=True)


def check_compatible(tokenizer_config, ar_config: PrologueARConfig) -> None:
    """Raise ``ValueError`` unless the AR's vocabulary fits the tokenizer's ids (codebooks, K, N).

    ``tokenizer_config`` is a :class:`PrologueTokenizerConfig` or a :class:`ProloguePostConfig` (anything with
    ``visual_codebook_size``, ``prologue_codebook_size``, ``num_prologue_tokens``, ``num_visual_tokens``).
    """
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


# name -> submodule, imported on first attribute access (PEP 562)
_LAZY = {
    **dict.fromkeys(
        ["ProloguePipeline", "ProloguePipelineOutput", "SamplingParams", "GuidanceSchedule", "SamplerOutput",
         "SAMPLING_PRESETS", "generate_ids", "PrologueSegmentLogitsProcessor", "imagenet_id2label",
         "prologue_model_card", "PackedARDecoder", "packed_decoder_unsupported", "PreallocatedCache"],
        "pipelines",
    ),
    **dict.fromkeys(
        ["PrologueTokenizerTrainer", "PrologueTokenizerTrainingArguments", "PrologueStage1Model",
         "PrologueStage1LossConfig", "PrologueStage1ModelArguments", "load_image_dataset", "ImageTransform",
         "routed_ar_loss", "ModelEMA"],
        "training",
    ),
    **dict.fromkeys(
        ["PrologueARTrainer", "PrologueARTrainingArguments", "PrologueARDataCollator"], "training.trainer_ar"
    ),
    **dict.fromkeys(["pretokenize_dataset", "load_pretokenized_dataset", "tokenizer_identity"], "training.pretokenize"),
    **dict.fromkeys(
        ["ProloguePostTrainer", "ProloguePostStage1Model", "ProloguePostLossConfig", "train_post"],
        "training.trainer_post",
    ),
    **dict.fromkeys(
        ["VisualTokenizerAdapter", "VisualTokenizerOutput", "PrologueTokenizerAdapter", "DiffusersVQModelAdapter",
         "JanusVQVAEAdapter", "Emu3VQVAEAdapter", "ChameleonVQVAEAdapter", "adapter_for_model",
         "load_visual_tokenizer", "register_visual_tokenizer_adapter", "detect_adapter_type"],
        "models.visual_tokenizers",
    ),
    **dict.fromkeys(
        ["convert_official_checkpoint", "convert_official_tokenizer", "convert_official_ar", "ar_to_official",
         "save_official_ar"],
        "conversion",
    ),
    **dict.fromkeys(
        ["sample_to_npz", "compute_generation_metrics", "evaluate_reconstruction", "train_linear_probe",
         "load_metric", "frechet_distance", "EfficientNetLite0Features", "InceptionV3Features"],
        "evaluation",
    ),
    "load_fashion_mnist": "fashion_mnist",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AR_PRESETS",
    "L2VectorQuantizer",
    "PrologueARConfig",
    "PrologueARForCausalLM",
    "PrologueARModel",
    "PrologueDiscriminator",
    "PrologueDiscriminatorConfig",
    "ProloguePostConfig",
    "ProloguePostEncoderOutput",
    "ProloguePostModel",
    "PrologueTokenizerConfig",
    "PrologueTokenizerDecoderOutput",
    "PrologueTokenizerEncoderOutput",
    "PrologueTokenizerModel",
    "PrologueTokenizerOutput",
    "PrologueVocabulary",
    "ProbSTEQuantizer",
    "QuantizerOutput",
    "check_compatible",
    *_LAZY,
]
