"""Checkpoints and output folders that lose nothing (issue 16 items 2, 3 and 4 on resume), and the fault-injection
test: a training run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one, losing at most one
checkpoint interval, in stage 1 (with a discriminator), stage 2 (with EMA) and Prologue-Post.

Fault injection: each recipe runs through its example script (``examples/train_*.py`` ``main(argv)`` with the tiny
YAML config) in a forked child process. The child kills itself with SIGKILL at an exact point, set up by patching a
Trainer method in the child only (nothing in the library knows about the test):

* ``mid_run``: at the start of the optimizer step after ``step`` (no save in progress);
* ``writing_checkpoint``: in the save of checkpoint ``step``, right after the weights and the optimizer were written
  (RNG state, ``trainer_state.json`` and the EMA not yet);
* ``after_trainer_state``: in the save of checkpoint ``step``, right after ``trainer_state.json`` (stage 1 and Post:
  their EMA is ``tokenizer/``, written with the weights before it);
* ``before_ema``: stage 2, in the save of checkpoint ``step``, as its ``ema/`` starts to be written (after
  ``trainer_state.json``: the window of issue 16 item 2, where the Trainer had already rotated the previous
  checkpoint away).

One chain per recipe, ``save_steps=2`` and ``save_total_limit=1`` (the setting that lost both checkpoints before):
killed at step 3 mid-run, resumed and killed writing checkpoint 4, resumed and killed between checkpoint 6's
``trainer_state.json`` and its EMA, resumed to the end (step 8). After each kill the newest complete checkpoint is at most one
interval behind; at the end every weight file (output folder and final checkpoint), the optimizer state and the
logged losses equal those of the uninterrupted run bit for bit.

Forked children start in about a second (the parent has already imported torch and transformers); a fresh
interpreter would take several. The child sets one thread before any torch work, as DataLoader workers do.
"""

import json
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel, Trainer
from transformers.trainer_callback import TrainerState

from prologue_hf.identity import tokenizer_identity
from prologue_hf.testing import random_image_dataset, random_pretokenized_dataset, tiny_ar, tiny_tokenizer
from prologue_hf.testing_post import tiny_post_model, tiny_vqmodel
from prologue_hf.training.image_data import ImageTrainingCollator, ImageTransform
from prologue_hf.training.pretokenize import PretokenizedInfo, load_pretokenized_dataset
from prologue_hf.training.recipe import (
    REPLACED_PREFIX,
    STAGING_PREFIX,
    previous_run_outputs,
    publish_checkpoint,
    resolve_resume_checkpoint,
    rotate_checkpoints,
)
from prologue_hf.training.stage1_model import ProloguePostLossConfig, ProloguePostStage1Model
from prologue_hf.training.trainer_ar import PrologueARTrainer, PrologueARTrainingArguments
from prologue_hf.training.trainer_post import ProloguePostTrainer
from prologue_hf.training.trainer_tokenizer import PrologueTokenizerTrainingArguments

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "examples" / "configs"
COMMON = ["--max_steps", "8", "--save_steps", "2", "--save_total_limit", "1", "--logging_steps", "1",
          "--warmup_steps", "2", "--per_device_train_batch_size", "4", "--disable_tqdm", "True"]  # fmt: skip
# (kill point, step, the newest complete checkpoint left): at most one interval (2 steps) lost each time; the third
# kill point is the recipe's "between trainer_state.json and the EMA"
CHAIN = [("mid_run", 3, 2), ("writing_checkpoint", 4, 2), (None, 6, 4)]


# ============================================================================================ data and trainers
def _ids_dataset(path: Path, tokenizer, rows: int = 32) -> Path:
    """A pretokenized dataset of random ids on disk, recorded as ``tokenizer``'s (as pretokenize_dataset writes)."""
    info = PretokenizedInfo.from_tokenizer(tokenizer, num_classes=10, num_images=rows)
    random_pretokenized_dataset(info, rows).save_to_disk(str(path))
    return path


def _image_folder(root: Path, size: int, count: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(count // 2):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            PIL.Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def _ar_trainer(output_dir: Path, ids: Path, **overrides) -> PrologueARTrainer:
    values = dict(
        per_device_train_batch_size=8, max_steps=2, learning_rate=1e-3, warmup_steps=0, logging_steps=1,
        save_strategy="steps", save_steps=2, use_cpu=True, seed=0, disable_tqdm=True, report_to="none",
    )  # fmt: skip
    args = PrologueARTrainingArguments(str(output_dir), **{**values, **overrides})
    return PrologueARTrainer(tiny_ar(seed=0), args, train_dataset=load_pretokenized_dataset(str(ids)))


def _post_trainer(output_dir: Path, tokenizer_seed: int = 0, **overrides) -> ProloguePostTrainer:
    post = tiny_post_model("janus_vqvae", seed=tokenizer_seed).train()
    torch.manual_seed(0)
    model = ProloguePostStage1Model(post, tiny_ar(post.config, seed=0).train(), ProloguePostLossConfig())
    values = dict(
        output_dir=str(output_dir), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
        min_learning_rate=1e-3, warmup_steps=0, use_cpu=True, report_to="none", save_strategy="steps", save_steps=2,
        logging_steps=1, dataloader_num_workers=0, ema_halflife_steps=2.0, seed=0, disable_tqdm=True,
    )  # fmt: skip
    return ProloguePostTrainer(
        model,
        PrologueTokenizerTrainingArguments(**{**values, **overrides}),
        train_dataset=random_image_dataset(8, 16, 16),
        data_collator=ImageTrainingCollator(ImageTransform(16)),
    )


# ============================================================================================ atomic checkpoints
def test_publishing_replaces_a_checkpoint_of_the_same_step_whole(tmp_path):
    old = tmp_path / "checkpoint-4"
    (old / "ema").mkdir(parents=True)
    (old / "pytorch_model.bin").write_bytes(b"stale")  # a file the new checkpoint does not have must not survive
    staging = tmp_path / f"{STAGING_PREFIX}checkpoint-4"
    staging.mkdir()
    (staging / "trainer_state.json").write_text("{}")
    publish_checkpoint(str(staging), str(old))
    assert os.listdir(tmp_path) == ["checkpoint-4"] and os.listdir(old) == ["trainer_state.json"]
    staging.mkdir()
    publish_checkpoint(str(staging), str(tmp_path / "checkpoint-6"))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4", "checkpoint-6"]


def test_rotation_goes_by_step_keeps_the_protected_and_clears_staging_leftovers(tmp_path):
    for step in (2, 4, 6, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    os.utime(tmp_path / "checkpoint-2", (4e9, 4e9))  # newest by modification time: the step decides, not the clock
    (tmp_path / f"{STAGING_PREFIX}checkpoint-8").mkdir()  # a killed save
    (tmp_path / f"{REPLACED_PREFIX}checkpoint-6").mkdir()
    (tmp_path / "samples").mkdir()
    # resumed from checkpoint-4 while a checkpoint-10 existed: the just-written checkpoint-6 is protected
    deleted = rotate_checkpoints(str(tmp_path), 2, keep=[str(tmp_path / "checkpoint-6"), None])
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-10", "checkpoint-6", "samples"]
    assert len(deleted) == 4
    assert rotate_checkpoints(str(tmp_path), None) == [] and rotate_checkpoints(str(tmp_path / "none"), 1) == []


# ============================================================================================ guarded output folders
def test_a_fresh_stage2_run_into_a_previous_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    ids, out = _ids_dataset(tmp_path / "ids", tiny_tokenizer(seed=0)), tmp_path / "run"
    _ar_trainer(out, ids, max_steps=4).train()
    before = (out / "checkpoint-4" / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"holds a previous run \(checkpoint-2, checkpoint-4\).*--overwrite_output_dir"):
        _ar_trainer(out, ids, seed=1).train()
    assert (out / "checkpoint-4" / "model.safetensors").read_bytes() == before  # untouched
    resumed = _ar_trainer(out, ids, max_steps=6)
    resumed.train(resume_from_checkpoint="latest")
    assert resumed.state.global_step == 6
    # overwrite_output_dir: the old checkpoints go first, so "latest" can only ever mean this run's
    fresh = _ar_trainer(out, ids, seed=1, overwrite_output_dir=True)
    fresh.train()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2"]
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"]] == [1, 2]
    # the final weights of a finished run count too
    final = tmp_path / "final"
    fresh.save_model(str(final))
    assert previous_run_outputs(str(final)) == ["model.safetensors"]
    with pytest.raises(ValueError, match=r"holds a previous run \(model.safetensors\)"):
        _ar_trainer(final, ids).train()


@pytest.mark.parametrize("script", ["train_tokenizer", "train_prologue_post"])
def test_a_fresh_stage1_or_post_run_into_a_previous_run_is_refused(script, tmp_path, load_example):
    out = tmp_path / "run"
    (out / "checkpoint-3").mkdir(parents=True)
    argv = ["--output_dir", str(out), "--cache_dir", str(tmp_path / "hf-cache"), "--max_steps", "1"]
    if script == "train_tokenizer":
        argv += ["--config", str(CONFIGS / "tokenizer_tiny.yaml"), "--train_data", str(_image_folder(tmp_path / "im", 32))]
    else:
        tiny_vqmodel().save_pretrained(tmp_path / "vq")
        argv += ["--config", str(CONFIGS / "post_tiny_cpu.yaml"), "--visual_tokenizer_name_or_path", str(tmp_path / "vq"),
                 "--train_data", str(_image_folder(tmp_path / "im", 16))]  # fmt: skip
    with pytest.raises(ValueError, match=r"holds a previous run \(checkpoint-3\)"):
        load_example(script).main(argv)
    assert os.listdir(out) == ["checkpoint-3"]


# ============================================================================================ tokenizer identity on resume
def test_stage2_resume_on_ids_of_another_tokenizer_is_refused(tmp_path):
    tokenizer_a, tokenizer_b = tiny_tokenizer(seed=0), tiny_tokenizer(seed=1)
    ids_a, ids_b = _ids_dataset(tmp_path / "a", tokenizer_a), _ids_dataset(tmp_path / "b", tokenizer_b)
    out = tmp_path / "run"
    _ar_trainer(out, ids_a).train()
    a, b = tokenizer_identity(tokenizer_a), tokenizer_identity(tokenizer_b)
    with pytest.raises(ValueError, match=rf"ids of tokenizer {a}, but this run's tokenizer is {b}.*--ignore_tokenizer_identity"):
        _ar_trainer(out, ids_b, max_steps=4).train(resume_from_checkpoint="latest")
    resumed = _ar_trainer(out, ids_b, max_steps=4, ignore_tokenizer_identity=True)  # the explicit opt-out
    resumed.train(resume_from_checkpoint="latest")
    assert resumed.state.global_step == 4 and resumed.model.config.tokenizer_identity == b
    same = _ar_trainer(out, ids_b, max_steps=6)  # checkpoint-4 now records b: no error
    same.train(resume_from_checkpoint="latest")
    assert same.state.global_step == 6


def test_post_resume_over_another_frozen_tokenizer_is_refused(tmp_path):
    out = tmp_path / "run"
    first = _post_trainer(out)
    first.train()
    recorded = first.model.post.config.visual_tokenizer["weights_sha256"]
    other = _post_trainer(out, tokenizer_seed=1, max_steps=4)
    current = other.model.post.config.visual_tokenizer["weights_sha256"]
    assert recorded != current
    with pytest.raises(ValueError, match=rf"weights {recorded}, but this run's tokenizer is .*weights {current}"):
        other.train(resume_from_checkpoint="latest")
    opted_out = _post_trainer(out, tokenizer_seed=1, max_steps=4, ignore_tokenizer_identity=True)
    opted_out.train(resume_from_checkpoint="latest")
    assert opted_out.state.global_step == 4


# ============================================================================================ the killed child
def _install_kill(point: str, step: int) -> None:
    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "mid_run":
        original = Trainer.training_step

        def training_step(self, *args, **kwargs):
            if self.state.global_step == step:
                die()
            return original(self, *args, **kwargs)

        Trainer.training_step = training_step
    elif point == "writing_checkpoint":
        original = Trainer._save_optimizer_and_scheduler

        def save_optimizer(self, output_dir):
            original(self, output_dir)
            if self.state.global_step == step:
                die()

        Trainer._save_optimizer_and_scheduler = save_optimizer
    elif point == "after_trainer_state":
        original = TrainerState.save_to_json

        def save_to_json(self, path):
            original(self, path)
            if self.global_step == step:
                die()

        TrainerState.save_to_json = save_to_json
    elif point == "before_ema":
        original = PreTrainedModel.save_pretrained

        def save_pretrained(self, save_directory, *args, **kwargs):
            folder = os.path.normpath(str(save_directory))
            if os.path.basename(folder) == "ema" and os.path.basename(os.path.dirname(folder)).endswith(f"checkpoint-{step}"):
                die()
            return original(self, save_directory, *args, **kwargs)

        PreTrainedModel.save_pretrained = save_pretrained
    else:
        raise ValueError(point)


def _child(script: str, argv: list[str], kill: tuple[str, int] | None) -> None:
    torch.set_num_threads(1)  # before any torch work in the forked process
    if kill is not None:
        _install_kill(*kill)
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"examples_{script}", REPO / "examples" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)


def _run(script: str, argv: list[str], kill: tuple[str, int] | None = None) -> int:
    process = multiprocessing.get_context("fork").Process(target=_child, args=(script, argv, kill))
    process.start()
    process.join(timeout=300)
    if process.is_alive():
        process.kill()
        pytest.fail(f"{script} {kill} did not finish")
    return process.exitcode


# ============================================================================================ comparisons
def _weight_files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*.safetensors"))}


def _logged_steps(checkpoint: Path) -> list[dict]:
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "loss" in entry]


def _assert_equal_state(a, b, where: str) -> None:
    """Nested optimizer / scheduler state dicts: tensors bit-equal, everything else equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), where
        for key in a:
            _assert_equal_state(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _assert_bit_identical(reference: Path, resumed: Path) -> None:
    files = _weight_files(reference)
    assert files and sorted(files) == sorted(_weight_files(resumed))
    for name, path in files.items():
        a, b = load_file(path), load_file(resumed / name)
        assert sorted(a) == sorted(b), name
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key}"
    for name in ("optimizer.pt", "scheduler.pt", "discriminator_optimizer.pt"):
        if (reference / "checkpoint-8" / name).is_file():
            a = torch.load(reference / "checkpoint-8" / name, weights_only=True)
            b = torch.load(resumed / "checkpoint-8" / name, weights_only=True)
            _assert_equal_state(a, b, name)
    assert _logged_steps(reference / "checkpoint-8") == _logged_steps(resumed / "checkpoint-8")  # losses, lr, norms


def _kill_resume_chain(
    script: str, argv: list[str], tmp_path: Path, weight_dirs: tuple[str, ...], before_ema: str = "after_trainer_state"
) -> None:
    reference, resumed = tmp_path / "reference", tmp_path / "killed"
    assert _run(script, argv + ["--output_dir", str(reference)]) == 0
    for index, (point, step, survivor) in enumerate(CHAIN):
        point = point or before_ema
        resume = ["--resume_from_checkpoint", "latest"] if index else []
        code = _run(script, argv + ["--output_dir", str(resumed), *resume], kill=(point, step))
        assert code == -signal.SIGKILL, (point, code)
        newest = resolve_resume_checkpoint("latest", str(resumed), weight_dirs)
        assert newest == str(resumed / f"checkpoint-{survivor}"), (point, os.listdir(resumed))
        assert step - survivor <= 2  # at most one checkpoint interval lost
        staging = resumed / f"{STAGING_PREFIX}checkpoint-{step}"
        if point == "mid_run":
            assert not staging.exists()
        else:  # the kill hit a save: its staging folder is there, unpublished, and the previous checkpoint survived
            assert staging.is_dir() and not (resumed / f"checkpoint-{step}").exists()
            assert (staging / "trainer_state.json").is_file() == (point != "writing_checkpoint")
    assert _run(script, argv + ["--output_dir", str(resumed), "--resume_from_checkpoint", "latest"]) == 0
    assert sorted(p.name for p in resumed.iterdir() if "checkpoint" in p.name) == ["checkpoint-8"]  # leftovers gone
    _assert_bit_identical(reference, resumed)


# ============================================================================================ the three recipes
def test_stage1_killed_three_ways_resumes_bit_identical(tmp_path):
    images = _image_folder(tmp_path / "images", 32)
    argv = ["--config", str(CONFIGS / "tokenizer_tiny.yaml"), "--train_data", str(images),
            "--cache_dir", str(tmp_path / "hf-cache"), "--reconstruction_grid_steps", "0", *COMMON]  # fmt: skip
    # tokenizer/ (EMA), tokenizer_online/, compact_ar/, discriminator/ and the discriminator's optimizer
    _kill_resume_chain("train_tokenizer", argv, tmp_path, ("tokenizer", "tokenizer_online", "compact_ar", "discriminator"))
    assert (tmp_path / "killed" / "checkpoint-8" / "discriminator_optimizer.pt").is_file()


def test_stage2_with_ema_killed_three_ways_resumes_bit_identical(tmp_path):
    ids = _ids_dataset(tmp_path / "ids", tiny_tokenizer(seed=0))
    argv = ["--config", str(CONFIGS / "ar_tiny_cpu.yaml"), "--dataset_name_or_path", str(ids),
            "--ema_halflife_steps", "50", "--sample_steps", "0", "--min_learning_rate", "1e-4", *COMMON]  # fmt: skip
    _kill_resume_chain("train_ar", argv, tmp_path, ("", "ema"), before_ema="before_ema")
    assert (tmp_path / "killed" / "checkpoint-8" / "ema" / "model.safetensors").is_file()


def test_post_killed_three_ways_resumes_bit_identical(tmp_path):
    tiny_vqmodel().save_pretrained(tmp_path / "vq")
    images = _image_folder(tmp_path / "images", 16)
    argv = ["--config", str(CONFIGS / "post_tiny_cpu.yaml"), "--visual_tokenizer_name_or_path", str(tmp_path / "vq"),
            "--train_data", str(images), "--cache_dir", str(tmp_path / "hf-cache"), *COMMON]  # fmt: skip
    _kill_resume_chain("train_prologue_post", argv, tmp_path, ("tokenizer", "tokenizer_online", "compact_ar"))
