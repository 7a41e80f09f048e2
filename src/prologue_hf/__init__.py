"""prologue-hf: Prologue (arXiv 2605.06137) for transformers / diffusers users.

The top level holds what a user of the models, the pipeline, the trainers, the converter and the metrics needs
(``__all__``, listed in docs/api.md); everything else is imported from its module (``prologue_hf.models``,
``.pipelines``, ``.training``, ``.conversion``, ``.evaluation``). Importing the package registers the four configs
and their models with the transformers ``Auto*`` classes. The models, configs and vocabulary are imported eagerly;
the pipeline, training, conversion and evaluation names load on first use (they pull in diffusers / datasets), so
``import prologue_hf`` stays light.
"""

from __future__ import annotations

import importlib

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .models import (
    AR_PRESETS,
    PrologueARConfig,
    PrologueARForCausalLM,
    PrologueARModel,
    PrologueTokenizerConfig,
    PrologueTokenizerModel,
)
from .models.configuration_prologue_post import ProloguePostConfig
from .models.discriminator import PrologueDiscriminator, PrologueDiscriminatorConfig
from .models.modeling_prologue_post import ProloguePostModel
from .vocabulary import PrologueVocabulary, check_compatible

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


# name -> submodule, imported on first attribute access (PEP 562)
_LAZY = {
    **dict.fromkeys(
        ["ProloguePipeline", "ProloguePipelineOutput", "SamplingParams", "GuidanceSchedule", "SAMPLING_PRESETS"],
        "pipelines",
    ),
    **dict.fromkeys(
        ["PrologueTokenizerTrainer", "PrologueTokenizerTrainingArguments", "PrologueStage1Model",
         "PrologueStage1LossConfig"],
        "training",
    ),
    **dict.fromkeys(["PrologueARTrainer", "PrologueARTrainingArguments"], "training.trainer_ar"),
    **dict.fromkeys(["pretokenize_dataset", "load_pretokenized_dataset"], "training.pretokenize"),
    "ProloguePostTrainer": "training.trainer_post",
    **dict.fromkeys(["ProloguePostStage1Model", "ProloguePostLossConfig"], "training.stage1_model"),
    "load_visual_tokenizer": "models.visual_tokenizers",
    **dict.fromkeys(["convert_official_checkpoint", "save_official_ar"], "conversion"),
    **dict.fromkeys(
        ["sample_to_npz", "compute_generation_metrics", "evaluate_reconstruction", "train_linear_probe",
         "load_metric"],
        "evaluation",
    ),
}

# Names the top level exported before the API was cut to the list above: old name -> the module to import it from
# (docs/api.md, "Moved"). Reaching one through ``prologue_hf.<name>`` raises an AttributeError that says where it went.
_MOVED = {
    **dict.fromkeys(
        ["L2VectorQuantizer", "ProbSTEQuantizer", "QuantizerOutput", "PrologueTokenizerEncoderOutput",
         "PrologueTokenizerDecoderOutput", "PrologueTokenizerOutput"],
        "prologue_hf.models",
    ),
    "ProloguePostEncoderOutput": "prologue_hf.models.modeling_prologue_post",
    **dict.fromkeys(["PrologueDiscriminator", "PrologueDiscriminatorConfig"], "prologue_hf.models.discriminator"),
    **dict.fromkeys(
        ["VisualTokenizerAdapter", "VisualTokenizerOutput", "PrologueTokenizerAdapter", "DiffusersVQModelAdapter",
         "JanusVQVAEAdapter", "Emu3VQVAEAdapter", "ChameleonVQVAEAdapter", "adapter_for_model",
         "register_visual_tokenizer_adapter", "detect_adapter_type"],
        "prologue_hf.models.visual_tokenizers",
    ),
    **dict.fromkeys(
        ["SamplerOutput", "generate_ids", "PrologueSegmentLogitsProcessor", "imagenet_id2label",
         "prologue_model_card", "PreallocatedCache"],
        "prologue_hf.pipelines",
    ),
    **dict.fromkeys(
        ["PrologueStage1ModelArguments", "load_image_dataset", "ImageTransform", "routed_ar_loss", "ModelEMA"],
        "prologue_hf.training",
    ),
    "PrologueARDataCollator": "prologue_hf.training.trainer_ar",
    "tokenizer_identity": "prologue_hf.identity",
    "train_post": "prologue_hf.training.trainer_post",
    **dict.fromkeys(["convert_official_tokenizer", "convert_official_ar", "ar_to_official"], "prologue_hf.conversion"),
    **dict.fromkeys(
        ["frechet_distance", "EfficientNetLite0Features", "InceptionV3Features"], "prologue_hf.evaluation"
    ),
    "load_fashion_mnist": "prologue_hf.fashion_mnist",
    **dict.fromkeys(["DemoConfig", "run_demo"], "prologue_hf.research.demo"),
    **dict.fromkeys(
        ["ReplicationConfig", "run_replication", "aggregate", "results_table", "sampling_sweep"],
        "prologue_hf.research.replication",
    ),
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _MOVED:
        raise AttributeError(
            f"prologue_hf.{name} is no longer exported at the top level: use `from {_MOVED[name]} import {name}` "
            "(docs/api.md, 'Moved')"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AR_PRESETS",
    "PrologueARConfig",
    "PrologueARForCausalLM",
    "PrologueARModel",
    "ProloguePostConfig",
    "ProloguePostModel",
    "PrologueTokenizerConfig",
    "PrologueTokenizerModel",
    "PrologueVocabulary",
    "check_compatible",
    *_LAZY,
]
