"""Stage 1 of Prologue: train the tokenizer with the routed loss (paper section 2, appendix E).

    accelerate launch examples/train_tokenizer.py --config examples/configs/tokenizer_B.yaml \
        --train_data ILSVRC/imagenet-1k --output_dir runs/prologue-B-tokenizer

Flags after --config override the YAML. See docs/training.md for every option.
"""

from transformers import set_seed

from prologue_hf.training.cli import parse_config_and_args
from prologue_hf.training.data import (
    ImageDataArguments,
    ImageTrainingCollator,
    ImageTransform,
    load_training_images,
)
from prologue_hf.training.losses import PrologueStage1LossConfig
from prologue_hf.training.trainer_tokenizer import (
    PrologueStage1ModelArguments,
    PrologueTokenizerTrainer,
    PrologueTokenizerTrainingArguments,
    build_stage1_model,
)


def main(argv=None):
    model_args, data_args, loss_config, training_args = parse_config_and_args(
        (PrologueStage1ModelArguments, ImageDataArguments, PrologueStage1LossConfig, PrologueTokenizerTrainingArguments),
        argv,
    )
    with training_args.main_process_first(desc="loading the dataset"):
        dataset = load_training_images(data_args, seed=training_args.seed)
    set_seed(training_args.seed)
    model = build_stage1_model(model_args, loss_config)
    transform = ImageTransform(model.tokenizer.config.image_size, data_args.random_crop, data_args.hflip)
    trainer = PrologueTokenizerTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=ImageTrainingCollator(transform, seed=training_args.data_seed or training_args.seed),
    )
    resume = training_args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=True if resume == "last" else resume)
    trainer.save_model()
    if training_args.push_to_hub:
        trainer.push_to_hub()


if __name__ == "__main__":
    main()
