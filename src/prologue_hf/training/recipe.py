"""The skeleton the three training recipes share: stage 1 (:mod:`.trainer_tokenizer`), stage 2 (:mod:`.trainer_ar`
with :mod:`.ar_recipe`) and Prologue-Post (:mod:`.trainer_post`).

* **Resume.** :func:`resolve_resume_checkpoint`: ``resume_from_checkpoint`` may be a checkpoint folder, or one of
  ``"last"``, ``"latest"``, ``"true"`` (any case) or ``True``, which all mean the newest *complete* checkpoint of the
  output folder. A checkpoint counts as complete once its weights and a readable ``trainer_state.json`` exist (the
  Trainer writes that file last); a half-written one (a run killed while saving) is skipped with a warning.
  :class:`RecipeTrainerMixin` applies it in ``train()`` of every recipe's trainer.
* **Compact AR.** :func:`build_compact_ar`: the jointly trained AR of stage 1 and Prologue-Post, its vocabulary from the
  tokenizer (:func:`~prologue_hf.vocabulary.ar_vocabulary_fields`, one precedence rule for overrides).
* **Augmentation.** :func:`seeded_image_collator`: random crop / flip drawn per sample from ``(seed, epoch, index)``,
  so a run and its resumption see the same augmentations whatever the worker count.
* **Output folders.** The sub-folder names below, and :func:`step_image_path` for the PNGs written during training.
* **Model cards.** :func:`write_model_card`, the one README writer of the three recipes.
* **Overrides.** :func:`json_overrides` reads the ``*_overrides`` JSON arguments of the recipes.
* **The end of a run.** :func:`train_save_push`: train (resuming as asked), save, push, in that order for all three.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..models.configuration_prologue_ar import PrologueARConfig
from ..models.modeling_prologue_ar import PrologueARForCausalLM
from ..vocabulary import ar_vocabulary_fields
from .image_data import ImageDataArguments, ImageTrainingCollator, ImageTransform

logger = logging.get_logger(__name__)

# Output folders: sub-folders of a recipe's output_dir and of each of its checkpoint-<step> folders.
TOKENIZER_DIR = "tokenizer"  # stage 1 / Post: the tokenizer inference and stage 2 load (EMA weights when EMA is on)
TOKENIZER_ONLINE_DIR = "tokenizer_online"  # stage 1 / Post with EMA: the raw (online) weights
COMPACT_AR_DIR = "compact_ar"  # stage 1 / Post: the jointly trained compact AR
DISCRIMINATOR_DIR = "discriminator"  # stage 1 with a GAN term
EMA_DIR = "ema"  # stage 2 with EMA: save_pretrained of the EMA model
RECONSTRUCTIONS_DIR = "reconstructions"  # stage 1: PNG grids of reconstructions
SAMPLES_DIR = "samples"  # stage 2: PNG grids of samples

RESUME_NEWEST = ("last", "latest", "true")  # spellings of "the newest complete checkpoint" (any case)
TRAINER_STATE_FILE = "trainer_state.json"
# What counts as the weights of a save_pretrained folder (a sharded save has an index; FSDP writes a folder).
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


# ============================================================================================ overrides
def json_overrides(value: str | dict | None, name: str) -> dict:
    """A recipe's ``*_overrides`` argument (a JSON object as text, a dict, or None) as a dict.

    >>> json_overrides('{"hidden_size": 64}', "compact_ar_overrides")
    {'hidden_size': 64}
    """
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} must be a JSON object, got {value!r} ({error})") from error
    if not isinstance(parsed, dict):
        raise ValueError(f"{name} must be a JSON object, got {value!r}")
    return parsed


# ============================================================================================ resume
def checkpoint_problem(path: str, weight_dirs: Sequence[str] = ("",)) -> str | None:
    """Why the checkpoint folder ``path`` is not complete, or ``None`` when it is.

    Complete means: ``trainer_state.json`` exists and is a readable JSON object, and every folder of ``weight_dirs``
    (relative to ``path``; ``""`` is ``path`` itself) holds weights (``model.safetensors``, a sharded index, or an
    FSDP ``pytorch_model_fsdp_*`` folder).
    """
    state_file = os.path.join(path, TRAINER_STATE_FILE)
    if not os.path.isfile(state_file):
        return f"no {TRAINER_STATE_FILE}"
    try:
        with open(state_file) as handle:
            state = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"unreadable {TRAINER_STATE_FILE} ({type(error).__name__}: {error})"
    if not isinstance(state, dict):
        return f"{TRAINER_STATE_FILE} is not a JSON object"
    for sub in weight_dirs:
        folder = os.path.join(path, sub)
        entries = os.listdir(folder) if os.path.isdir(folder) else []
        if not any(e in _WEIGHT_FILES or e.startswith("pytorch_model_fsdp") for e in entries):
            return f"no weights in {os.path.join(sub, '') if sub else 'the folder'}"
    return None


def resolve_resume_checkpoint(
    resume: str | bool | None, output_dir: str, weight_dirs: Sequence[str] = ("",)
) -> str | None:
    """The checkpoint folder a run resumes from, or ``None`` to start fresh.

    Args:
        resume: ``None`` / ``False`` / ``""`` (start fresh); ``True`` or ``"last"`` / ``"latest"`` / ``"true"`` (any
            case): the newest complete ``checkpoint-<step>`` of ``output_dir``, skipping incomplete ones with a
            warning; or a checkpoint folder, which must be complete.
        output_dir: the run's output folder.
        weight_dirs: the weight folders a complete checkpoint of this recipe holds (see :func:`checkpoint_problem`).

    Raises:
        ValueError: a named folder is missing or incomplete, or no complete checkpoint exists when one was asked for.
    """
    if resume is None or resume is False or resume == "":
        return None
    if resume is True or (isinstance(resume, str) and resume.strip().lower() in RESUME_NEWEST):
        return _newest_complete_checkpoint(output_dir, weight_dirs)
    if not isinstance(resume, str | os.PathLike):
        raise ValueError(f"resume_from_checkpoint must be a folder, True or one of {RESUME_NEWEST}, got {resume!r}")
    resume = os.fspath(resume)
    if not os.path.isdir(resume):
        raise ValueError(
            f"resume_from_checkpoint must be a checkpoint folder or one of {RESUME_NEWEST} (the newest complete "
            f"checkpoint of output_dir), got {resume!r}: no such folder"
        )
    problem = checkpoint_problem(resume, weight_dirs)
    if problem is not None:
        raise ValueError(f"cannot resume from {resume}: the checkpoint is incomplete ({problem})")
    return resume


def _newest_complete_checkpoint(output_dir: str, weight_dirs: Sequence[str]) -> str:
    steps = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            match = _CHECKPOINT_NAME.match(name)
            if match and os.path.isdir(os.path.join(output_dir, name)):
                steps.append((int(match.group(1)), os.path.join(output_dir, name)))
    skipped = []
    for _, path in sorted(steps, reverse=True):
        problem = checkpoint_problem(path, weight_dirs)
        if problem is None:
            if skipped:
                logger.warning(f"resuming from {path}; skipped newer incomplete checkpoints: {'; '.join(skipped)}")
            return path
        skipped.append(f"{path} ({problem})")
    detail = f"; incomplete ones skipped: {'; '.join(skipped)}" if skipped else ""
    raise ValueError(f"resume_from_checkpoint asks for the newest checkpoint, but {output_dir} holds no complete one{detail}")


class RecipeTrainerMixin:
    """Mixed into the recipes' ``transformers.Trainer`` subclasses (before ``Trainer``): ``train()`` resolves
    ``resume_from_checkpoint`` with :func:`resolve_resume_checkpoint` (so every recipe accepts the same spellings and
    never picks a half-written checkpoint), then calls :meth:`restore_extra_state` before the Trainer resumes."""

    def checkpoint_weight_dirs(self) -> tuple[str, ...]:
        """The weight folders a complete checkpoint of this trainer holds (default: the checkpoint folder itself)."""
        return ("",)

    def restore_extra_state(self, checkpoint: str) -> None:
        """Load what the Trainer does not (e.g. EMA weights) from ``checkpoint`` before it resumes (default: nothing)."""

    def save_extra_outputs(self, output_dir: str) -> None:
        """Write what ``save_model`` does not to the final ``output_dir`` (e.g. EMA weights; default: nothing)."""

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """``Trainer.train``, resuming from ``resume_from_checkpoint`` as :func:`resolve_resume_checkpoint` reads it."""
        checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir, self.checkpoint_weight_dirs())
        if checkpoint is not None:
            logger.info(f"resuming from {checkpoint}")
            self.restore_extra_state(checkpoint)
        return super().train(resume_from_checkpoint=checkpoint, **kwargs)


def train_save_push(trainer: RecipeTrainerMixin, training_args: Any, commit_message: str) -> None:
    """The end of every recipe: ``trainer.train`` resuming from ``training_args.resume_from_checkpoint`` (a folder,
    or ``last`` / ``latest`` / ``true``), ``save_model`` to ``output_dir`` plus the trainer's extra outputs, the Hub
    push when ``push_to_hub`` is set (its README is the recipe's model card), then a barrier so no process exits while
    another still writes."""
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.args.should_save:
        trainer.save_extra_outputs(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message=commit_message)
    trainer.accelerator.wait_for_everyone()


# ============================================================================================ models and data
def build_compact_ar(
    tokenizer_config: Any, num_classes: int, preset: str | None = "compact", overrides: str | dict | None = None
) -> PrologueARForCausalLM:
    """The compact AR trained jointly with a tokenizer (stage 1, Prologue-Post), in training mode.

    Args:
        tokenizer_config: the tokenizer's config (any description :func:`~prologue_hf.vocabulary.ar_vocabulary_fields`
            reads): it decides the vocabulary.
        num_classes: real classes of the dataset (the null class is added).
        preset: an AR preset (``"compact"`` = the paper's ~40M AR), or None for the :class:`PrologueARConfig` defaults.
        overrides: further :class:`PrologueARConfig` fields (JSON text or dict); a vocabulary field among them must
            equal the tokenizer's (``ValueError`` otherwise).
    """
    fields = ar_vocabulary_fields(tokenizer_config, num_classes, **json_overrides(overrides, "compact_ar_overrides"))
    config = PrologueARConfig.from_preset(preset, **fields) if preset else PrologueARConfig(**fields)
    return PrologueARForCausalLM(config).train()


def seeded_image_collator(image_size: int, data_args: ImageDataArguments, seed: int) -> ImageTrainingCollator:
    """The training collator of stage 1 and Prologue-Post: ``image_size`` crops (random crop / flip as ``data_args``
    says) whose randomness is drawn per sample from ``(seed, epoch, index)`` (:class:`ImageTrainingCollator`), for
    datasets from :func:`~prologue_hf.training.image_data.load_training_images` (they carry the ``index``)."""
    transform = ImageTransform(image_size, data_args.random_crop, data_args.hflip)
    return ImageTrainingCollator(transform, seed=seed)


# ============================================================================================ outputs
def step_image_path(output_dir: str, kind: str, step: int) -> str:
    """Where a PNG written at optimizer step ``step`` goes: ``<output_dir>/<kind>/step-XXXXXXXX.png``.

    >>> step_image_path("runs/a", SAMPLES_DIR, 500)
    'runs/a/samples/step-00000500.png'
    """
    return os.path.join(output_dir, kind, f"step-{step:08d}.png")


def write_model_card(
    output_dir: str, title: str, summary: str, usage: Sequence[str], facts: Sequence[str], tags: Sequence[str] = ()
) -> str:
    """Write ``<output_dir>/README.md``, the model card of a training run (all three recipes); returns its path.

    Args:
        title: the card's heading.
        summary: one paragraph: what was trained, on what, following which part of the paper.
        usage: lines of Python that load the result.
        facts: bullet points (folders, EMA, steps, ...).
        tags: Hub tags besides ``prologue``.
    """
    data = ModelCardData(library_name="prologue-hf", tags=["prologue", *tags])
    bullets = "\n".join(f"- {fact}" for fact in facts)
    code = "\n".join(usage)
    text = f"---\n{data.to_yaml()}\n---\n# {title}\n\n{summary}\n\n```python\n{code}\n```\n\n{bullets}\n"
    path = os.path.join(output_dir, "README.md")
    os.makedirs(output_dir, exist_ok=True)
    ModelCard(text).save(path)
    return path


__all__ = [
    "COMPACT_AR_DIR",
    "DISCRIMINATOR_DIR",
    "EMA_DIR",
    "RECONSTRUCTIONS_DIR",
    "RESUME_NEWEST",
    "RecipeTrainerMixin",
    "SAMPLES_DIR",
    "TOKENIZER_DIR",
    "TOKENIZER_ONLINE_DIR",
    "build_compact_ar",
    "checkpoint_problem",
    "json_overrides",
    "resolve_resume_checkpoint",
    "seeded_image_collator",
    "step_image_path",
    "train_save_push",
    "write_model_card",
]
