"""The skeleton the three training recipes share: stage 1 (:mod:`.trainer_tokenizer`), stage 2 (:mod:`.trainer_ar`
with :mod:`.ar_recipe`) and Prologue-Post (:mod:`.trainer_post`).

* **Atomic checkpoints.** :class:`RecipeTrainerMixin` writes each ``checkpoint-<step>`` whole (weights, optimizer,
  scheduler, RNG, ``trainer_state.json`` and the recipe's extras such as stage 2's ``ema/``) into
  ``_incomplete-checkpoint-<step>`` and renames it when complete; only then are old checkpoints rotated away
  (``save_total_limit``). A run killed at any moment leaves the previous checkpoint intact.
* **Resume.** :func:`resolve_resume_checkpoint`: ``resume_from_checkpoint`` may be a checkpoint folder, or one of
  ``"last"``, ``"latest"``, ``"true"`` (any case) or ``True``, which all mean the newest *complete* checkpoint of the
  output folder. A checkpoint counts as complete once its weights and a readable ``trainer_state.json`` exist; a
  half-written one (left by an older version killed while saving) is skipped with a warning.
  :class:`RecipeTrainerMixin` applies it in ``train()`` of every recipe's trainer.
* **Guarded output folders.** A fresh run (no resume asked) into an ``output_dir`` that holds a previous run's
  checkpoints or weights is refused unless ``overwrite_output_dir`` (:class:`RecipeTrainingArguments`), which then
  deletes the old checkpoints first, so ``latest`` can never pick another run's.
* **Tokenizer identity on resume.** A recipe whose ids come from a tokenizer (stage 2, Prologue-Post) refuses to resume
  a checkpoint recorded for another tokenizer unless ``ignore_tokenizer_identity``.
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
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from transformers import TrainingArguments
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy
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
# A checkpoint is written under STAGING_PREFIX + its name and renamed when complete; a checkpoint it replaces waits
# under REPLACED_PREFIX + its name until then. Neither matches "checkpoint-*" (transformers' rotation and resume
# globs) nor _CHECKPOINT_NAME, and the leading "_" keeps them out of the Trainer's Hub pushes of output_dir.
STAGING_PREFIX = "_incomplete-"
REPLACED_PREFIX = "_replaced-"


# ============================================================================================ arguments
@dataclass
class RecipeTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the options every recipe shares (the recipes' argument classes derive from it).

    Args:
        overwrite_output_dir: start a fresh run in an ``output_dir`` that holds a previous run's checkpoints or weights,
            deleting its ``checkpoint-*`` folders first (transformers 4 had this flag; without it such a run is
            refused, see :meth:`RecipeTrainerMixin.train`).
        ignore_tokenizer_identity: resume (stage 2, Prologue-Post) from a checkpoint recorded for another tokenizer
            than this run's: the explicit opt-out of the identity check.
    """

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start a fresh run in an output_dir holding a previous run: delete its checkpoints first."},
    )
    ignore_tokenizer_identity: bool = field(
        default=False,
        metadata={"help": "Resume from a checkpoint whose tokenizer identity differs from this run's (stage 2, Post)."},
    )


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
        raise ValueError(
            f"cannot resume from resume_from_checkpoint={resume!r}: the checkpoint is incomplete ({problem}); give a "
            f"complete checkpoint folder or one of {RESUME_NEWEST} (the newest complete checkpoint)"
        )
    return resume


def _newest_complete_checkpoint(output_dir: str, weight_dirs: Sequence[str]) -> str:
    skipped = []
    for _, path in reversed(checkpoint_steps(output_dir)):
        problem = checkpoint_problem(path, weight_dirs)
        if problem is None:
            if skipped:
                logger.warning(f"resuming from {path}; skipped newer incomplete checkpoints: {'; '.join(skipped)}")
            return path
        skipped.append(f"{path} ({problem})")
    detail = f"; incomplete ones skipped: {'; '.join(skipped)}" if skipped else ""
    raise ValueError(f"resume_from_checkpoint asks for the newest checkpoint, but {output_dir} holds no complete one{detail}")


def checkpoint_steps(output_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every ``checkpoint-<step>`` folder of ``output_dir``, in step order (empty if none)."""
    found = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            match = _CHECKPOINT_NAME.match(name)
            if match and os.path.isdir(os.path.join(output_dir, name)):
                found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def previous_run_outputs(output_dir: str, weight_dirs: Sequence[str] = ("",)) -> list[str]:
    """What a previous run left in ``output_dir`` that a fresh run would mix with or overwrite: its
    ``checkpoint-<step>`` folders and the weights of its final save (in ``output_dir`` or one of ``weight_dirs``).
    Names relative to ``output_dir``; staging folders of a killed save are not listed (they never count)."""
    found = [os.path.basename(path) for _, path in checkpoint_steps(output_dir)]
    for sub in weight_dirs:
        folder = os.path.join(output_dir, sub)
        if os.path.isdir(folder):
            found += sorted(os.path.join(sub, e) for e in os.listdir(folder) if e in _WEIGHT_FILES)
    return found


def publish_checkpoint(staging: str, final: str) -> None:
    """Rename the complete checkpoint folder ``staging`` to ``final`` (same parent folder). A folder already at
    ``final`` (a checkpoint of the same step from an earlier attempt) is moved aside first and deleted after."""
    if not os.path.isdir(final):
        os.replace(staging, final)
        return
    replaced = os.path.join(os.path.dirname(final), REPLACED_PREFIX + os.path.basename(final))
    shutil.rmtree(replaced, ignore_errors=True)
    os.replace(final, replaced)
    os.replace(staging, final)
    shutil.rmtree(replaced, ignore_errors=True)


def rotate_checkpoints(output_dir: str, save_total_limit: int | None, keep: Sequence[str | None] = ()) -> list[str]:
    """Delete the oldest (by step) complete checkpoints of ``output_dir`` beyond ``save_total_limit``, never one of
    ``keep`` (the checkpoint just written, the best one), and every leftover staging folder of a killed save.
    Returns the deleted paths.

    transformers orders by modification time; the step is used here because every checkpoint is now renamed into
    place whole, and ``keep`` protects the one just written, which is what the modification time stood for.
    """
    deleted = []
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        if name.startswith((STAGING_PREFIX, REPLACED_PREFIX)) and os.path.isdir(os.path.join(output_dir, name)):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
            deleted.append(os.path.join(output_dir, name))
    if not save_total_limit or save_total_limit <= 0:
        return deleted
    protected = {os.path.abspath(path) for path in keep if path}
    checkpoints = [path for _, path in checkpoint_steps(output_dir)]
    excess = len(checkpoints) - max(save_total_limit, len(protected))
    for path in checkpoints:
        if excess <= 0:
            break
        if os.path.abspath(path) not in protected:
            logger.info(f"deleting {path} (save_total_limit={save_total_limit})")
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(path)
            excess -= 1
    return deleted


class RecipeTrainerMixin:
    """Mixed into the recipes' ``transformers.Trainer`` subclasses (before ``Trainer``): the checkpoint and resume
    rules of every recipe, in one place.

    * ``train()`` resolves ``resume_from_checkpoint`` with :func:`resolve_resume_checkpoint` (every recipe accepts the
      same spellings and never picks a half-written checkpoint). A resume checks the tokenizer identity
      (:meth:`resume_tokenizer_identities`) and calls :meth:`restore_extra_state`; a fresh run refuses an
      ``output_dir`` holding a previous run (:func:`previous_run_outputs`) unless ``overwrite_output_dir``.
    * ``_save_checkpoint`` (the Trainer's periodic save) writes the checkpoint whole into a staging folder, adds
      :meth:`save_extra_checkpoint_state`, renames it into place and only then rotates old checkpoints.
    """

    def checkpoint_weight_dirs(self) -> tuple[str, ...]:
        """The weight folders a complete checkpoint of this trainer holds (default: the checkpoint folder itself)."""
        return ("",)

    def restore_extra_state(self, checkpoint: str) -> None:
        """Load what the Trainer does not (e.g. EMA weights) from ``checkpoint`` before it resumes (default: nothing)."""

    def save_extra_checkpoint_state(self, checkpoint_dir: str) -> None:
        """Write what the Trainer does not (e.g. EMA weights) into a checkpoint being written (default: nothing).
        Called on every process, after ``trainer_state.json`` and before the folder is renamed into place."""

    def save_extra_outputs(self, output_dir: str) -> None:
        """Write what ``save_model`` does not to the final ``output_dir`` (e.g. EMA weights; default: nothing)."""

    def resume_tokenizer_identities(self, checkpoint: str) -> tuple[str | None, str | None]:
        """``(recorded in checkpoint, of this run)``: the identity of the tokenizer whose ids the checkpoint was
        trained on and that of this run's, or ``None`` where not recorded (default: no tokenizer, no check)."""
        return None, None

    # ------------------------------------------------------------------ train: resume or fresh
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """``Trainer.train``, resuming from ``resume_from_checkpoint`` as :func:`resolve_resume_checkpoint` reads it.

        Raises:
            ValueError: a fresh run into an ``output_dir`` holding a previous run's checkpoints or weights (pass
                ``overwrite_output_dir`` or a resume); a resume from a checkpoint of another tokenizer (pass
                ``ignore_tokenizer_identity``).
        """
        checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir, self.checkpoint_weight_dirs())
        if checkpoint is None:
            self._prepare_fresh_output_dir()
        else:
            logger.info(f"resuming from {checkpoint}")
            self._check_resume_identity(checkpoint)
            newer = [
                path
                for step, path in checkpoint_steps(self.args.output_dir)
                if step > _checkpoint_step(checkpoint) and checkpoint_problem(path, self.checkpoint_weight_dirs()) is None
            ]
            if newer:
                logger.warning(
                    f"resuming from {checkpoint} although {self.args.output_dir} holds newer checkpoints {newer}: this "
                    "run replaces each when it reaches its step; until then resume_from_checkpoint='latest' picks them"
                )
            self.restore_extra_state(checkpoint)
        return super().train(resume_from_checkpoint=checkpoint, **kwargs)

    def _prepare_fresh_output_dir(self) -> None:
        output_dir = self.args.output_dir
        found = previous_run_outputs(output_dir, self.checkpoint_weight_dirs())
        if not found:
            return
        if not getattr(self.args, "overwrite_output_dir", False):
            shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
            raise ValueError(
                f"output_dir {output_dir} holds a previous run ({shown}): a fresh run would overwrite it and "
                "resume_from_checkpoint='latest' could later continue the other run. Resume it with "
                "--resume_from_checkpoint latest (or a checkpoint folder), choose another output_dir, or pass "
                "--overwrite_output_dir to delete its checkpoints and start over"
            )
        self.accelerator.wait_for_everyone()  # every process has looked before the main one deletes
        if self.args.should_save:
            for _, path in checkpoint_steps(output_dir):
                shutil.rmtree(path)
            rotate_checkpoints(output_dir, None)  # staging leftovers
            logger.warning(f"overwrite_output_dir: deleted the previous run's checkpoints in {output_dir}")
        self.accelerator.wait_for_everyone()

    def _check_resume_identity(self, checkpoint: str) -> None:
        recorded, current = self.resume_tokenizer_identities(checkpoint)
        if recorded is None or current is None or recorded == current:
            return
        message = (
            f"{checkpoint} was trained on the ids of tokenizer {recorded}, but this run's tokenizer is {current}: "
            "continuing would mix two vocabularies"
        )
        if getattr(self.args, "ignore_tokenizer_identity", False):
            logger.warning(f"{message}; resuming anyway (ignore_tokenizer_identity)")
            return
        raise ValueError(f"{message}. Resume with the same tokenizer's data, or pass --ignore_tokenizer_identity")

    # ------------------------------------------------------------------ atomic checkpoints
    def _save_checkpoint(self, model, trial) -> None:
        """``Trainer._save_checkpoint`` (same files, same order), written into ``_incomplete-checkpoint-<step>`` and
        renamed to ``checkpoint-<step>`` once complete; old checkpoints are rotated after that, never before."""
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final, staging = os.path.join(run_dir, name), os.path.join(run_dir, STAGING_PREFIX + name)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # a killed attempt at this step
        self.accelerator.wait_for_everyone()
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        self.save_model(staging, _internal_call=True)
        if self.args.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST) and self.state.best_global_step:
            best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
            if self.state.best_global_step == self.state.global_step or os.path.exists(best):
                self.state.best_model_checkpoint = best
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(staging)
            self._save_scaler(staging)
            self._save_rng_state(staging)
        if self.args.should_save:
            for callback in self.callback_handler.callbacks + [self.control]:
                if isinstance(callback, ExportableState):
                    key = type(callback).__name__
                    if isinstance(self.state.stateful_callbacks[key], list):
                        self.state.stateful_callbacks[key].append(callback.state())
                    else:
                        self.state.stateful_callbacks[key] = callback.state()
            self.state.save_to_json(os.path.join(staging, TRAINER_STATE_FILE))
        self.save_extra_checkpoint_state(staging)
        self.accelerator.wait_for_everyone()  # every process has written its part (RNG states, shards)
        if self.args.should_save:
            publish_checkpoint(staging, final)
        if self.args.push_to_hub:
            self._push_from_checkpoint(final)
        if self.args.should_save:
            rotate_checkpoints(run_dir, self.args.save_total_limit, keep=(final, self.state.best_model_checkpoint))


def _checkpoint_step(path: str) -> int:
    match = _CHECKPOINT_NAME.match(os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else -1


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
    "RecipeTrainingArguments",
    "STAGING_PREFIX",
    "SAMPLES_DIR",
    "TOKENIZER_DIR",
    "TOKENIZER_ONLINE_DIR",
    "build_compact_ar",
    "checkpoint_problem",
    "checkpoint_steps",
    "json_overrides",
    "previous_run_outputs",
    "publish_checkpoint",
    "resolve_resume_checkpoint",
    "rotate_checkpoints",
    "seeded_image_collator",
    "step_image_path",
    "train_save_push",
    "write_model_card",
]
