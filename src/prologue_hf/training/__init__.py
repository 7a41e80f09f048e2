"""Training utilities: data loading, the routed stage-1 loss, Trainer subclasses."""

from .cli import parse_config_and_args, yaml_to_argv
from .data import (
    ImageDataArguments,
    ImageTrainingCollator,
    ImageTransform,
    load_image_dataset,
    load_training_images,
    prepare_image_dataset,
    to_rgb,
)
from .ema import ModelEMA
from .losses import (
    PerceptualWeightsUnavailableError,
    PrologueStage1LossConfig,
    PrologueStage1Model,
    PrologueStage1Output,
    RoutedARLossOutput,
    build_perceptual_loss,
    routed_ar_loss,
    visual_prob_ste,
)
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
    "PrologueStage1LossConfig",
    "PrologueStage1Model",
    "PrologueStage1ModelArguments",
    "PrologueStage1Output",
    "PrologueTokenizerTrainer",
    "PrologueTokenizerTrainingArguments",
    "RoutedARLossOutput",
    "build_perceptual_loss",
    "build_stage1_model",
    "load_image_dataset",
    "load_stage1_components",
    "load_training_images",
    "parse_config_and_args",
    "prepare_image_dataset",
    "routed_ar_loss",
    "save_stage1_components",
    "to_rgb",
    "train_tokenizer",
    "visual_prob_ste",
    "yaml_to_argv",
]
