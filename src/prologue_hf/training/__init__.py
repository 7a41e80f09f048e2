"""Training: image data, the losses, the stage-1 models, the recipe skeleton, and the stage-1 trainer.

Stage 2 (``trainer_ar``, ``ar_recipe``, ``pretokenize``) and Prologue-Post (``trainer_post``) load on import of their
own modules (they pull in more of ``datasets`` / the frozen-tokenizer adapters).
"""

from .cli import parse_config_and_args, yaml_to_argv
from .ema import ModelEMA
from .image_data import (
    ImageDataArguments,
    ImageTrainingCollator,
    ImageTransform,
    load_image_dataset,
    load_training_images,
    prepare_image_dataset,
    to_rgb,
)
from .losses import (
    PerceptualWeightsUnavailableError,
    PrologueARLossOutput,
    PrologueStage1LossConfig,
    RoutedARLossOutput,
    build_perceptual_loss,
    prologue_ar_loss,
    routed_ar_loss,
)
from .recipe import (
    RecipeTrainerMixin,
    build_compact_ar,
    json_overrides,
    resolve_resume_checkpoint,
    write_model_card,
)
from .stage1_model import PrologueStage1Model, PrologueStage1Output
from .trainer_tokenizer import (
    PrologueStage1ModelArguments,
    PrologueTokenizerTrainer,
    PrologueTokenizerTrainingArguments,
    build_stage1_model,
    load_stage1_components,
    save_stage1_components,
    train_tokenizer,
)

__all__ = [
    "ImageDataArguments",
    "ImageTrainingCollator",
    "ImageTransform",
    "ModelEMA",
    "PerceptualWeightsUnavailableError",
    "PrologueARLossOutput",
    "PrologueStage1LossConfig",
    "PrologueStage1Model",
    "PrologueStage1ModelArguments",
    "PrologueStage1Output",
    "PrologueTokenizerTrainer",
    "PrologueTokenizerTrainingArguments",
    "RecipeTrainerMixin",
    "RoutedARLossOutput",
    "build_compact_ar",
    "build_perceptual_loss",
    "build_stage1_model",
    "json_overrides",
    "load_image_dataset",
    "load_stage1_components",
    "load_training_images",
    "parse_config_and_args",
    "prepare_image_dataset",
    "prologue_ar_loss",
    "resolve_resume_checkpoint",
    "routed_ar_loss",
    "save_stage1_components",
    "to_rgb",
    "train_tokenizer",
    "write_model_card",
    "yaml_to_argv",
]
