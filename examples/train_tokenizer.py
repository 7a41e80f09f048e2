"""Stage 1 of Prologue: train the tokenizer with the routed loss (paper section 2, appendix E).

    accelerate launch examples/train_tokenizer.py --config examples/configs/tokenizer_B.yaml \
        --train_data ILSVRC/imagenet-1k --output_dir runs/prologue-B-tokenizer

Flags after --config override the YAML; resume with --resume_from_checkpoint last (or latest / true: the newest
complete checkpoint; or a checkpoint folder). See docs/training.md for every option.
"""

from prologue_hf.training.cli import parse_config_and_args
from prologue_hf.training.image_data import ImageDataArguments
from prologue_hf.training.losses import PrologueStage1LossConfig
from prologue_hf.training.trainer_tokenizer import (
    PrologueStage1ModelArguments,
    PrologueTokenizerTrainingArguments,
    train_tokenizer,
)


def main(argv=None):
    model_args, data_args, loss_config, training_args = parse_config_and_args(
        (PrologueStage1ModelArguments, ImageDataArguments, PrologueStage1LossConfig, PrologueTokenizerTrainingArguments),
        argv,
    )
    train_tokenizer(model_args, data_args, loss_config, training_args)


if __name__ == "__main__":
    main()
