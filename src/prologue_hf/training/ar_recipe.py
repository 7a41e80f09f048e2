"""The stage-2 recipe behind ``accelerate launch examples/train_ar.py``: arguments, YAML configs, model wiring.

A YAML config (``examples/configs/ar_*.yaml``) is a flat mapping of :class:`PrologueARScriptArguments` and
:class:`~prologue_hf.training.trainer_ar.PrologueARTrainingArguments` fields; command-line flags override it::

    accelerate launch examples/train_ar.py --config examples/configs/ar_B-B.yaml \\
        --dataset_name_or_path data/imagenet-B-tokens --output_dir runs/ar-B-B
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from transformers import AutoModel, set_seed
from transformers.utils import logging

from ..models import AR_PRESETS, PrologueARConfig, PrologueARForCausalLM
from .cli import parse_config_and_args
from .pretokenize import PretokenizedInfo, load_pretokenized_dataset
from .recipe import train_save_push
from .trainer_ar import PrologueARSampleGridCallback, PrologueARTrainer, PrologueARTrainingArguments

logger = logging.get_logger(__name__)

_ARCHITECTURE_OVERRIDES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


@dataclass
class PrologueARScriptArguments:
    """Data, model and sampling options of ``examples/train_ar.py`` (the optimisation ones are
    :class:`PrologueARTrainingArguments`)."""

    dataset_name_or_path: str = field(
        default=None, metadata={"help": "Pretokenized dataset (examples/pretokenize.py output folder or Hub repo)."}
    )
    dataset_split: str | None = field(default=None, metadata={"help": "Split, for DatasetDict / Hub datasets."})
    eval_dataset_name_or_path: str | None = field(default=None, metadata={"help": "Pretokenized eval dataset."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows."})
    ar_preset: str | None = field(default=None, metadata={"help": f"AR size: one of {sorted(AR_PRESETS)}."})
    ar_config_name_or_path: str | None = field(default=None, metadata={"help": "AR config (json / folder / repo)."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "Initial AR weights (else random init)."})
    hidden_size: int | None = field(default=None, metadata={"help": "Override the preset's width."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Override the preset's depth."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Override the preset's heads."})
    intermediate_size: int | None = field(default=None, metadata={"help": "Override the MLP width."})
    hidden_dropout: float = field(default=0.1, metadata={"help": "Residual-branch dropout (paper: 0.1)."})
    embedding_dropout: float = field(default=0.1, metadata={"help": "Embedding dropout (paper: 0.1)."})
    use_qk_norm: bool = field(default=False, metadata={"help": "Per-head q/k RMSNorm (the official AR has it)."})
    num_classes: int | None = field(default=None, metadata={"help": "Classes (default: from the dataset)."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "eager / sdpa / flash_attention_2."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "The dataset's tokenizer: identity-checked, decodes the sample grids."}
    )
    sample_class_labels: str = field(default="0,1,2,3,4,5,6,7", metadata={"help": "Comma-separated grid labels."})
    sample_preset: str | None = field(default=None, metadata={"help": "SamplingParams preset of the grids."})
    sample_seed: int = field(default=0, metadata={"help": "Seed of the sample grids."})

    def __post_init__(self):
        if not self.dataset_name_or_path:
            raise ValueError("dataset_name_or_path is required (a folder written by examples/pretokenize.py)")
        if self.ar_preset is not None and self.ar_preset not in AR_PRESETS:
            raise ValueError(f"ar_preset must be one of {sorted(AR_PRESETS)}, got {self.ar_preset!r}")
        chosen = [n for n in ("ar_preset", "ar_config_name_or_path", "model_name_or_path") if getattr(self, n)]
        if len(chosen) > 1:
            raise ValueError(f"give only one of ar_preset / ar_config_name_or_path / model_name_or_path, got {chosen}")


def build_ar_config(info: PretokenizedInfo, args: PrologueARScriptArguments) -> PrologueARConfig:
    """The AR config of a run: vocabulary (and tokenizer identity) from the dataset, sizes from the preset, a config
    file, or the overrides; dropouts from ``args``. A given config must match the dataset (checked)."""
    overrides = {name: getattr(args, name) for name in _ARCHITECTURE_OVERRIDES if getattr(args, name) is not None}
    common = dict(
        hidden_dropout=args.hidden_dropout,
        embedding_dropout=args.embedding_dropout,
        use_qk_norm=args.use_qk_norm,
    )
    if args.ar_config_name_or_path:
        config = PrologueARConfig.from_pretrained(args.ar_config_name_or_path, **overrides, **common)
    elif args.model_name_or_path:
        config = PrologueARConfig.from_pretrained(args.model_name_or_path, **common)
    else:  # sizes: preset < overrides; the vocabulary from the dataset (ar_vocabulary_fields' precedence rule)
        preset = AR_PRESETS[args.ar_preset] if args.ar_preset else {}
        config = PrologueARConfig(**info.ar_config_kwargs(args.num_classes, **{**preset, **overrides, **common}))
    if config.tokenizer_identity is None:
        config.tokenizer_identity = info.tokenizer_identity
    info.check_ar_config(config)
    if info.class_names and len(info.class_names) <= config.num_classes:
        # the dataset's ClassLabel names, so a pipeline built on this AR takes names (ProloguePipeline reads them)
        names = {i: str(name) for i, name in enumerate(info.class_names)}
        names.update({i: f"class {i}" for i in range(len(names), config.num_classes)})
        config.id2label = names
    return config


def parse_ar_args(argv: list[str] | None = None) -> tuple[PrologueARScriptArguments, PrologueARTrainingArguments]:
    """``--config file.yaml`` (flat mapping of argument names) plus command-line flags, which win
    (:func:`~prologue_hf.training.cli.parse_config_and_args`)."""
    return parse_config_and_args((PrologueARScriptArguments, PrologueARTrainingArguments), argv)


def train_ar(script_args: PrologueARScriptArguments, training_args: PrologueARTrainingArguments) -> PrologueARTrainer:
    """Run stage 2 end to end: load the ids, build / load the AR, train (resuming from
    ``training_args.resume_from_checkpoint``: a folder or ``"last"`` / ``"latest"`` / ``"true"``), ``save_pretrained``
    (and the EMA weights to ``<output_dir>/ema``), optionally push to the Hub, then write the ready-to-load pipeline
    folder ``<output_dir>/pipeline`` (:func:`save_pipeline_folder`). The AR config's ``id2label`` holds the dataset's
    class names. Returns the trainer."""
    with training_args.main_process_first(desc="loading the pretokenized dataset"):
        train_dataset = load_pretokenized_dataset(script_args.dataset_name_or_path, script_args.dataset_split)
        eval_dataset = (
            load_pretokenized_dataset(script_args.eval_dataset_name_or_path, script_args.dataset_split)
            if script_args.eval_dataset_name_or_path
            else None
        )
    if script_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(script_args.max_train_samples, len(train_dataset))))
    if training_args.activation_checkpointing and os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "false") == "true":
        # examples/accelerate_configs/fsdp.yaml checkpoints inside FSDP (no redundant all-gather); the Trainer refuses
        # both at once, so the config's activation_checkpointing gives way
        logger.info("FSDP does the activation checkpointing; activation_checkpointing of the AR config ignored")
        training_args.activation_checkpointing = training_args.gradient_checkpointing = False
    info = PretokenizedInfo.from_dataset(train_dataset)
    config = build_ar_config(info, script_args)
    config._attn_implementation = script_args.attn_implementation
    set_seed(training_args.seed)  # the same initial weights on every process and every resumed run
    if script_args.model_name_or_path:
        model = PrologueARForCausalLM.from_pretrained(script_args.model_name_or_path, config=config)
    else:
        model = PrologueARForCausalLM(config)
    logger.info(f"AR: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, vocabulary {config.vocab_size}")

    tokenizer = None
    callbacks = []
    if script_args.tokenizer_name_or_path:
        tokenizer = AutoModel.from_pretrained(script_args.tokenizer_name_or_path)  # Prologue or Prologue-Post
        if training_args.sample_steps:
            labels = [int(x) for x in script_args.sample_class_labels.split(",") if x.strip()]
            kept = [label for label in labels if 0 <= label < config.num_classes]
            if len(kept) < len(labels):
                logger.warning(f"sample_class_labels outside [0, {config.num_classes}) dropped: {sorted(set(labels) - set(kept))}")
            labels = kept or list(range(min(8, config.num_classes)))
            callbacks.append(
                PrologueARSampleGridCallback(
                    tokenizer, labels, training_args.sample_steps, script_args.sample_preset, script_args.sample_seed
                )
            )
    elif training_args.sample_steps:
        logger.warning("sample_steps is set but no tokenizer_name_or_path: no sample grids will be written")

    trainer = PrologueARTrainer(
        model,
        training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        image_tokenizer=tokenizer,
        callbacks=callbacks,
    )
    for callback in callbacks:  # the sample grids also go to the trackers report_to names
        callback.tracker_callbacks = trainer.callback_handler.callbacks
    train_save_push(trainer, training_args, commit_message="Prologue stage-2 AR")  # EMA weights to <output_dir>/ema
    if trainer.args.should_save:
        save_pipeline_folder(trainer, tokenizer, info, training_args.output_dir)
    trainer.accelerator.wait_for_everyone()
    return trainer


PIPELINE_DIR = "pipeline"


def save_pipeline_folder(trainer: PrologueARTrainer, tokenizer, info: PretokenizedInfo | None, output_dir: str) -> str | None:
    """Write ``<output_dir>/pipeline``: a ready-to-load :class:`~prologue_hf.pipelines.ProloguePipeline` of the
    trained AR (its EMA weights when EMA is on: what the paper samples with) and the dataset's tokenizer, with the
    class names. The tokenizer is ``tokenizer_name_or_path``, else the folder the dataset records if it still exists
    (identity-checked); without one there is nothing to decode with and only a warning is logged. Returns the
    folder or ``None``."""
    from ..pipelines import ProloguePipeline

    if tokenizer is None and info is not None and info.tokenizer_name_or_path and os.path.isdir(info.tokenizer_name_or_path):
        candidate = AutoModel.from_pretrained(info.tokenizer_name_or_path)
        try:
            info.check_tokenizer(candidate)
            tokenizer = candidate
        except ValueError as error:
            logger.warning(f"no pipeline folder: the dataset's recorded tokenizer folder is another tokenizer ({error})")
            return None
    if tokenizer is None:
        logger.warning(
            "no pipeline folder written: pass tokenizer_name_or_path (the dataset's tokenizer) to get "
            f"<output_dir>/{PIPELINE_DIR}"
        )
        return None
    ar = trainer.ema.model if trainer.ema is not None else trainer.accelerator.unwrap_model(trainer.model)
    was_training = ar.training
    pipeline = ProloguePipeline(tokenizer=tokenizer.eval(), ar=ar.eval())
    folder = os.path.join(output_dir, PIPELINE_DIR)
    pipeline.save_pretrained(folder)
    ar.train(was_training)
    logger.info(f"pipeline folder: {folder} (ProloguePipeline.from_pretrained)")
    return folder


__all__ = ["PIPELINE_DIR", "PrologueARScriptArguments", "build_ar_config", "parse_ar_args", "save_pipeline_folder", "train_ar"]
