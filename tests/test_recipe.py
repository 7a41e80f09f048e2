"""The recipe skeleton shared by stage 1, stage 2 and Prologue-Post (prologue_hf.training.recipe): resume resolution,
compact-AR builder, seeded collator, model cards, overrides."""

import json
import logging
import os

import pytest
import torch
from transformers import TrainingArguments

from prologue_hf.testing import random_image_dataset, tiny_ar, tiny_tokenizer_config
from prologue_hf.training.image_data import ImageDataArguments
from prologue_hf.training.recipe import (
    RecipeTrainerMixin,
    build_compact_ar,
    checkpoint_problem,
    json_overrides,
    resolve_resume_checkpoint,
    seeded_image_collator,
    step_image_path,
    write_model_card,
)


def _checkpoint(root, step, weights=("",), state="ok"):
    """A fake ``checkpoint-<step>`` folder: weight files in ``weights`` sub-folders and a trainer_state.json that is
    valid (``"ok"``), absent (``None``) or truncated (``"broken"``, a run killed while writing it)."""
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    for sub in weights:
        (path / sub).mkdir(parents=True, exist_ok=True)
        (path / sub / "model.safetensors").write_bytes(b"weights")
    if state == "ok":
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    elif state == "broken":
        (path / "trainer_state.json").write_text('{"global_step": ')
    return str(path)


@pytest.fixture
def warnings_of_recipe(caplog):
    # transformers' loggers do not propagate to the root logger: let caplog see this one
    logger = logging.getLogger("prologue_hf.training.recipe")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="prologue_hf.training.recipe")
    yield caplog
    logger.removeHandler(caplog.handler)


# ------------------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("spelling", ["last", "latest", "true", "True", "LATEST", " last ", True])
def test_every_resume_spelling_picks_the_newest_complete_checkpoint(tmp_path, spelling):
    _checkpoint(tmp_path, 5)
    newest = _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 9)  # numeric order, not name order or creation order
    assert resolve_resume_checkpoint(spelling, str(tmp_path)) == newest


def test_half_written_checkpoints_are_skipped_with_a_warning(tmp_path, warnings_of_recipe):
    complete = _checkpoint(tmp_path, 4)
    _checkpoint(tmp_path, 6, weights=())  # killed before the weights
    _checkpoint(tmp_path, 8, state=None)  # killed before trainer_state.json
    _checkpoint(tmp_path, 12, state="broken")  # killed while writing trainer_state.json
    assert resolve_resume_checkpoint("latest", str(tmp_path)) == complete
    message = warnings_of_recipe.text
    assert "checkpoint-12 (unreadable trainer_state.json" in message
    assert "checkpoint-8 (no trainer_state.json)" in message
    assert "checkpoint-6 (no weights in the folder)" in message


def test_a_recipe_names_the_weight_folders_a_complete_checkpoint_holds(tmp_path):
    both = _checkpoint(tmp_path, 2, weights=("tokenizer", "compact_ar"))
    _checkpoint(tmp_path, 3, weights=("tokenizer",))  # compact_ar/ missing
    assert checkpoint_problem(both, ("tokenizer", "compact_ar")) is None
    assert resolve_resume_checkpoint("last", str(tmp_path), ("tokenizer", "compact_ar")) == both
    assert checkpoint_problem(str(tmp_path / "checkpoint-3"), ("tokenizer", "compact_ar")) == "no weights in compact_ar/"
    # a sharded save (index) and an FSDP folder count as weights
    sharded = tmp_path / "checkpoint-7"
    (sharded / "pytorch_model_fsdp_0").mkdir(parents=True)
    (sharded / "trainer_state.json").write_text("{}")
    assert checkpoint_problem(str(sharded)) is None


def test_no_resume_an_explicit_folder_and_clear_errors(tmp_path):
    for fresh in (None, False, ""):
        assert resolve_resume_checkpoint(fresh, str(tmp_path)) is None
    with pytest.raises(ValueError, match="holds no complete one"):
        resolve_resume_checkpoint("latest", str(tmp_path))
    _checkpoint(tmp_path, 3, state=None)
    with pytest.raises(ValueError, match=r"holds no complete one; incomplete ones skipped: .*checkpoint-3"):
        resolve_resume_checkpoint(True, str(tmp_path))
    # an explicit folder is used as given, and refused when incomplete or missing
    explicit = _checkpoint(tmp_path / "elsewhere", 1)
    assert resolve_resume_checkpoint(explicit, str(tmp_path)) == explicit
    with pytest.raises(ValueError, match=r"checkpoint is incomplete \(no trainer_state.json\)"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-3"), str(tmp_path))
    with pytest.raises(ValueError, match="no such folder"):
        resolve_resume_checkpoint(str(tmp_path / "nowhere"), str(tmp_path))
    with pytest.raises(ValueError, match="must be a folder, True or one of"):
        resolve_resume_checkpoint(3, str(tmp_path))


class _RecordingTrainer:
    """Stands in for transformers.Trainer: records what ``train`` receives."""

    def __init__(self, output_dir):
        self.args = TrainingArguments(output_dir=str(output_dir), report_to="none", use_cpu=True)
        self.received, self.restored = "unset", []

    def train(self, resume_from_checkpoint=None, **kwargs):
        self.received = resume_from_checkpoint


class _Recipe(RecipeTrainerMixin, _RecordingTrainer):
    def restore_extra_state(self, checkpoint):
        self.restored.append(checkpoint)


def test_the_trainer_mixin_resolves_before_the_trainer_resumes(tmp_path):
    trainer = _Recipe(tmp_path)
    newest = _checkpoint(tmp_path, 20)
    _checkpoint(tmp_path, 30, state="broken")
    trainer.train(resume_from_checkpoint="latest")
    assert trainer.received == newest and trainer.restored == [newest]
    with pytest.raises(ValueError, match="holds a previous run .checkpoint-20, checkpoint-30"):
        trainer.train()  # fresh, into a folder holding checkpoints (the opt-out: tests/test_checkpoint_safety.py)
    trainer.args.output_dir = str(tmp_path / "fresh")
    trainer.train()
    assert trainer.received is None and trainer.restored == [newest]


# ------------------------------------------------------------------------------------------------ models, data
def test_compact_ar_vocabulary_comes_from_the_tokenizer_with_one_precedence_rule():
    tokenizer = tiny_tokenizer_config()
    ar = build_compact_ar(tokenizer, 10, "compact", '{"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}')
    assert ar.training
    config = ar.config
    assert (config.visual_vocab_size, config.prologue_vocab_size) == (tokenizer.visual_codebook_size, tokenizer.prologue_codebook_size)
    assert (config.num_prologue_tokens, config.num_visual_tokens, config.num_classes) == (4, 16, 10)
    assert (config.hidden_size, config.num_hidden_layers, config.tie_word_embeddings) == (64, 2, True)  # preset kept
    same = build_compact_ar(tokenizer, 10, None, {"num_visual_tokens": 16, "hidden_size": 64, "num_hidden_layers": 1,
                                                  "num_attention_heads": 4})
    assert same.config.num_visual_tokens == 16  # an override equal to the tokenizer's value is accepted
    with pytest.raises(ValueError, match="num_visual_tokens=64 was passed, but the tokenizer decides num_visual_tokens=16"):
        build_compact_ar(tokenizer, 10, "compact", {"num_visual_tokens": 64})
    with pytest.raises(ValueError, match="compact_ar_overrides must be a JSON object"):
        build_compact_ar(tokenizer, 10, "compact", "[1]")


def test_json_overrides():
    assert json_overrides(None, "x") == {} and json_overrides({"a": 1}, "x") == {"a": 1}
    assert json_overrides('{"a": [1, 2]}', "x") == {"a": [1, 2]}
    with pytest.raises(ValueError, match="post_overrides must be a JSON object"):
        json_overrides("{oops", "post_overrides")


def _images(n=6, seed=0):
    return random_image_dataset(n, 24, 20, seed=seed, num_classes=n, add_index=True)


def test_seeded_collator_draws_the_same_augmentation_for_the_same_seed():
    examples = [dict(row) for row in _images()]
    data_args = ImageDataArguments(train_data="unused")  # random crop and flip on (paper)
    first = seeded_image_collator(16, data_args, seed=7)
    torch.manual_seed(1)  # the global generator plays no part
    a = first(examples)["pixel_values"]
    torch.manual_seed(2)
    b = seeded_image_collator(16, data_args, seed=7)(examples)["pixel_values"]
    assert a.shape == (6, 3, 16, 16) and torch.equal(a, b)
    # one sample alone gets the crop it gets in a batch (per-sample generators: worker count does not matter)
    assert torch.equal(first(examples[2:3])["pixel_values"][0], a[2])
    assert not torch.equal(seeded_image_collator(16, data_args, seed=8)(examples)["pixel_values"], a)
    first.set_epoch(1)
    assert not torch.equal(first(examples)["pixel_values"], a)


# ------------------------------------------------------------------------------------------------ outputs
def test_model_card_and_step_image_path(tmp_path):
    path = write_model_card(
        str(tmp_path / "run"), "A title", "What was trained.", ["import prologue_hf", "x = 1"], ["fact one", "fact two"],
        tags=["extra"],
    )
    text = open(path).read()
    assert path == os.path.join(str(tmp_path / "run"), "README.md")
    assert text.startswith("---\nlibrary_name: prologue-hf\ntags:\n- prologue\n- extra\n---\n# A title\n")
    assert "```python\nimport prologue_hf\nx = 1\n```" in text and "- fact one\n- fact two\n" in text
    assert step_image_path("out", "samples", 42) == os.path.join("out", "samples", "step-00000042.png")


def test_stage2_trainer_writes_its_card_with_the_same_writer(tmp_path):
    from prologue_hf.training.trainer_ar import PrologueARTrainer, PrologueARTrainingArguments

    args = PrologueARTrainingArguments(str(tmp_path), use_cpu=True, report_to="none", ema_halflife_steps=10.0)
    trainer = PrologueARTrainer(tiny_ar(), args)
    trainer.create_model_card()
    text = (tmp_path / "README.md").read_text()
    assert "# Prologue stage-2 AR" in text and "library_name: prologue-hf" in text
    assert "EMA in `ema/`" in text and "PrologueARForCausalLM.from_pretrained" in text
    assert trainer.checkpoint_weight_dirs() == ("", "ema")
