"""Tests of PrologueTokenizerTrainer: learning on a tiny set, exact resume, optimizers, schedule, NaN stop, saving,
the example script (one process in-process, two CPU processes through accelerate / gloo)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import TrainerCallback, set_seed

from prologue_hf import PrologueARForCausalLM, PrologueTokenizerModel
from prologue_hf.models.discriminator import PrologueDiscriminator
from prologue_hf.testing import TINY_AR_KWARGS, TINY_TOKENIZER_KWARGS
from prologue_hf.training.image_data import (
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

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # shared CPUs: see conftest.one_thread


def _trainer(tmp_path, image_dir, name, *, gan=True, collator=None, loss_kwargs=None, model_kwargs=None, **arg_overrides):
    loss_config = PrologueStage1LossConfig(
        perceptual_loss="none",
        gan_weight=0.1 if gan else 0.0,
        lecam_weight=0.001 if gan else 0.0,
        r1_weight=0.01 if gan else 0.0,
        r1_interval=4,
        **(loss_kwargs or {}),
    )
    model_args = PrologueStage1ModelArguments(
        tokenizer_overrides=json.dumps(TINY_TOKENIZER_KWARGS),
        compact_ar_overrides=json.dumps(TINY_AR_KWARGS),  # compact preset: tied embeddings (tied save/load path)
        discriminator_overrides=json.dumps({"hidden_size": 8}),
        num_classes=2,
        **(model_kwargs or {}),
    )
    set_seed(0)
    model = build_stage1_model(model_args, loss_config)
    defaults = dict(
        output_dir=str(tmp_path / name),
        max_steps=10,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        min_learning_rate=1e-4,
        warmup_steps=3,
        logging_steps=1,
        save_steps=1000,
        ema_halflife_steps=5,
        report_to="none",
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    args = PrologueTokenizerTrainingArguments(**{**defaults, **arg_overrides})
    dataset = load_training_images(ImageDataArguments(train_data=str(image_dir), cache_dir=str(tmp_path / "hf-cache")))
    collator = collator or ImageTrainingCollator(ImageTransform(32), seed=0)
    return PrologueTokenizerTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)


def _step_logs(trainer):
    return {h["step"]: h for h in trainer.state.log_history if "loss" in h}


# ------------------------------------------------------------------------------------------------ learning
def test_tiny_run_reconstruction_and_ar_ce_fall(tmp_path, image_dir):
    trainer = _trainer(
        tmp_path, image_dir, "run", max_steps=240, per_device_train_batch_size=8, logging_steps=20,
        reconstruction_grid_steps=120, reconstruction_grid_images=4,
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    first, last = logs[0], logs[-1]
    print({k: (first[k], last[k]) for k in ("l1", "ar_ce", "ar_ce_prologue", "ar_ce_visual", "discriminator")})
    assert last["l1"] < 0.5 * first["l1"], (first["l1"], last["l1"])
    assert last["ar_ce"] < first["ar_ce"] - 1.0, (first["ar_ce"], last["ar_ce"])
    assert last["ar_ce_prologue"] < first["ar_ce_prologue"]
    for key in ("commitment", "gan_generator", "discriminator", "lecam", "r1", "visual_codebook_usage",
                "visual_codebook_perplexity", "prologue_codebook_usage", "prologue_codebook_perplexity",
                "lr_tokenizer", "lr_compact_ar", "lr_discriminator", "ar_visual_dropped_fraction"):
        assert key in last, key
    assert 0 < last["visual_codebook_usage"] <= 1 and 1 <= last["prologue_codebook_perplexity"] <= 16
    # reconstruction grids: originals, online, EMA rows of 4 images
    grid = PIL.Image.open(Path(trainer.args.output_dir) / "reconstructions" / "step-00000240.png")
    assert grid.size == (4 * 32, 3 * 32)

    # final export: save_pretrained folders that load with from_pretrained
    out = tmp_path / "export"
    trainer.save_model(str(out))
    tokenizer = PrologueTokenizerModel.from_pretrained(out / "tokenizer")
    for (name, a), b in zip(tokenizer.state_dict().items(), trainer.ema.model.state_dict().values()):
        assert torch.equal(a, b), name  # tokenizer/ holds the EMA weights
    online = PrologueTokenizerModel.from_pretrained(out / "tokenizer_online")
    assert all(torch.equal(a, b) for a, b in zip(online.state_dict().values(), trainer.model.tokenizer.state_dict().values()))
    ar = PrologueARForCausalLM.from_pretrained(out / "compact_ar")
    assert all(torch.equal(a, b) for a, b in zip(ar.state_dict().values(), trainer.model.compact_ar.state_dict().values()))
    disc = PrologueDiscriminator.from_pretrained(out / "discriminator")
    assert torch.equal(disc.lecam_real_ema, trainer.model.discriminator.lecam_real_ema)
    assert float(disc.lecam_real_ema) != 0.0
    trainer.create_model_card()
    assert "subfolder=\"tokenizer\"" in (Path(trainer.args.output_dir) / "README.md").read_text()


# ------------------------------------------------------------------------------------------------ resume
def test_resume_gives_identical_losses_and_weights(tmp_path, image_dir):
    full = _trainer(tmp_path, image_dir, "full", max_steps=10, save_steps=5)
    full.train()
    checkpoint = Path(full.args.output_dir) / "checkpoint-5"
    assert {"tokenizer", "tokenizer_online", "compact_ar", "discriminator", "optimizer.pt", "scheduler.pt",
            "discriminator_optimizer.pt", "discriminator_scheduler.pt", "rng_state.pth"} <= set(os.listdir(checkpoint))

    # checkpoint-10 half written (killed before the discriminator): "last" means checkpoint-5, in the same folder
    assert full.checkpoint_weight_dirs() == ("tokenizer", "tokenizer_online", "compact_ar", "discriminator")
    shutil.rmtree(Path(full.args.output_dir) / "checkpoint-10" / "discriminator")
    resumed = _trainer(tmp_path, image_dir, "full", max_steps=10, save_steps=5)
    resumed.train(resume_from_checkpoint="last")
    a, b = _step_logs(full), _step_logs(resumed)
    assert sorted(b) == list(range(1, 11))
    for step in range(6, 11):  # steps after the checkpoint (16 images / 4 = 4 steps per epoch: mid-epoch resume)
        for key in ("loss", "l1", "ar_ce", "ar_ce_prologue", "discriminator", "gan_generator", "grad_norm", "learning_rate"):
            assert a[step][key] == b[step][key], (step, key, a[step][key], b[step][key])
    assert "r1" in a[8] and a[8]["r1"] == b[8]["r1"]  # (7 + 1) % 4 == 0
    for (name, x), y in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(x, y), name
    for x, y in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(x, y)
    sa, sb = full.discriminator_optimizer.state_dict()["state"], resumed.discriminator_optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert int(sa[0]["step"]) == 10


# ------------------------------------------------------------------------------------------------ optimizers
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_optimizer_groups_and_schedule(tmp_path, image_dir):
    trainer = _trainer(tmp_path, image_dir, "opt", max_steps=20, warmup_steps=4, lr_hold_steps=6, learning_rate=1e-3,
                       min_learning_rate=2e-4, ar_learning_rate=5e-4)
    trainer.create_optimizer_and_scheduler(num_training_steps=20)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["tokenizer"]["betas"] == (0.0, 0.99) and groups["tokenizer"]["weight_decay"] == 0.0
    assert groups["compact_ar"]["betas"] == (0.9, 0.99) and groups["compact_ar"]["weight_decay"] == 0.03
    assert groups["compact_ar_no_decay"]["weight_decay"] == 0.0
    stage1 = trainer.model
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(groups["tokenizer"]["params"]) == ids(stage1.tokenizer.parameters())
    assert ids(groups["compact_ar"]["params"]) | ids(groups["compact_ar_no_decay"]["params"]) == ids(stage1.compact_ar.parameters())
    norms = {id(p) for n, p in stage1.compact_ar.named_parameters() if "norm" in n}
    assert norms and norms <= ids(groups["compact_ar_no_decay"]["params"])
    assert not ids(stage1.discriminator.parameters()) & set().union(*(ids(g["params"]) for g in trainer.optimizer.param_groups))
    disc_group = trainer.discriminator_optimizer.param_groups[0]
    assert disc_group["betas"] == (0.0, 0.99) and disc_group["weight_decay"] == 1e-4
    assert ids(disc_group["params"]) == ids(stage1.discriminator.parameters())
    # fused AdamW kernels (the for-loop default on the CPU churns memory every step: issue 19)
    assert all(g["fused"] for g in trainer.optimizer.param_groups) and disc_group["fused"]
    # warmup 4 -> hold 6 -> linear decay to the floor at step 20 (same shape for every group)
    lrs = []
    for _ in range(21):
        lrs.append([g["lr"] for g in trainer.optimizer.param_groups] + [disc_group["lr"]])
        trainer.lr_scheduler.step()
        trainer.discriminator_lr_scheduler.step()
    tok = [r[0] for r in lrs]
    assert tok[4] == pytest.approx(1e-3) and tok[10] == pytest.approx(1e-3)
    assert tok[15] == pytest.approx(1e-3 - 0.5 * (1e-3 - 2e-4)) and tok[20] == pytest.approx(2e-4)
    assert all(a > b for a, b in zip(tok[10:20], tok[11:21]))
    assert lrs[20][1] == pytest.approx(5e-4 * 0.2) and lrs[20][-1] == pytest.approx(2e-4)


def test_gradient_accumulation_steps_the_discriminator_once_per_step(tmp_path, image_dir):
    trainer = _trainer(tmp_path, image_dir, "ga", max_steps=3, gradient_accumulation_steps=2, per_device_train_batch_size=2)
    trainer.train()
    state = trainer.discriminator_optimizer.state_dict()["state"]
    assert int(state[0]["step"]) == 3
    assert int(trainer.optimizer.state_dict()["state"][0]["step"]) == 3
    assert all(p.grad is None for p in trainer.model.discriminator.parameters())


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="min_learning_rate"):
        PrologueTokenizerTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-4, min_learning_rate=1e-3)
    with pytest.raises(ValueError, match="fp16"):
        PrologueTokenizerTrainingArguments(output_dir=str(tmp_path), fp16=True, use_cpu=True)
    with pytest.raises(ValueError, match="JSON object"):
        build_stage1_model(PrologueStage1ModelArguments(tokenizer_overrides="[1, 2]"), PrologueStage1LossConfig())


# ------------------------------------------------------------------------------------------------ NaN
class _NaNAtCall:
    """Forward hook: the ``bad_call``-th output of the module gets one NaN (the inputs are valid images, which the
    tokenizer checks, so the NaN has to arise inside the model, as a real divergence would)."""

    def __init__(self, bad_call):
        self.calls, self.bad_call = 0, bad_call

    def __call__(self, module, inputs, output):
        self.calls += 1
        if self.calls == self.bad_call:
            output = output.clone()
            output.view(-1)[0] = float("nan")
            return output


def test_non_finite_loss_stops_after_saving_the_last_good_state(tmp_path, image_dir):
    trainer = _trainer(tmp_path, image_dir, "nan", max_steps=10, save_steps=1000)
    trainer.model.tokenizer.decoder.output_layer.register_forward_hook(_NaNAtCall(bad_call=4))
    with pytest.raises(FloatingPointError, match="non-finite stage-1 loss at step 3") as error:
        trainer.train()
    checkpoint = Path(trainer.args.output_dir) / "checkpoint-3"
    assert str(checkpoint) in str(error.value)
    saved = PrologueTokenizerModel.from_pretrained(checkpoint / "tokenizer_online")
    for (name, a), b in zip(saved.state_dict().items(), trainer.model.tokenizer.state_dict().values()):
        assert torch.equal(a, b), name  # exactly the weights before the bad step, and they are finite
    assert all(torch.isfinite(p).all() for p in saved.parameters())
    disc = PrologueDiscriminator.from_pretrained(checkpoint / "discriminator")
    assert all(torch.isfinite(b).all() for b in disc.buffers())  # BatchNorm / LeCam statistics rolled back too
    # the checkpoint resumes
    resumed = _trainer(tmp_path, image_dir, "nan-resumed", max_steps=5)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 5


# ------------------------------------------------------------------------------------------------ example script
def _tiny_example_args(image_dir, tmp_path, out) -> list[str]:
    """``examples/train_tokenizer.py`` arguments every example test shares: the tiny config, the image folder, an HF
    cache and the output folder under ``tmp_path``."""
    return [
        "--config", str(REPO / "examples" / "configs" / "tokenizer_tiny.yaml"),
        "--train_data", str(image_dir), "--cache_dir", str(tmp_path / "hf-cache"), "--output_dir", str(out),
    ]


def test_example_script_single_process(tmp_path, image_dir, load_example):
    out = tmp_path / "cli"
    load_example("train_tokenizer").main([
        *_tiny_example_args(image_dir, tmp_path, out),
        "--max_steps", "4", "--save_steps", "2", "--logging_steps", "2", "--disable_tqdm", "True",
    ])
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["log_history"][-1]["epoch"] == 2.0  # 16 images / batch 8
    tokenizer = PrologueTokenizerModel.from_pretrained(out / "tokenizer")
    assert tokenizer.config.num_prologue_tokens == 4 and tokenizer.config.image_size == 32


def test_example_script_two_cpu_processes(tmp_path, image_dir):
    """accelerate launch --multi_gpu --num_processes 2 on a CPU-only run: torch.distributed with gloo."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
        str(REPO / "examples" / "train_tokenizer.py"),
        *_tiny_example_args(image_dir, tmp_path, out),
        "--max_steps", "4", "--save_steps", "4", "--logging_steps", "2", "--disable_tqdm", "True",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    checkpoint = out / "checkpoint-4"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    # 2 processes x 8 images = the whole 16-image set per step: one step per epoch
    assert state["log_history"][-1]["epoch"] == 4.0
    assert all(np.isfinite(h["loss"]) for h in state["log_history"] if "loss" in h)
    tokenizer = PrologueTokenizerModel.from_pretrained(out / "tokenizer")
    assert all(torch.isfinite(p).all() for p in tokenizer.parameters())


def test_example_script_streaming(tmp_path, image_dir, load_example):
    out = tmp_path / "stream"
    load_example("train_tokenizer").main([
        *_tiny_example_args(image_dir, tmp_path, out),
        "--streaming", "True", "--shuffle_buffer_size", "16", "--max_steps", "3", "--save_steps", "3",
        "--logging_steps", "3", "--disable_tqdm", "True",
    ])
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and np.isfinite(state["log_history"][0]["loss"])


def test_configs_parse_with_paper_values():
    from prologue_hf.training.cli import parse_config_and_args
    from prologue_hf.training.image_data import ImageDataArguments as DataArgs

    types = (PrologueStage1ModelArguments, DataArgs, PrologueStage1LossConfig, PrologueTokenizerTrainingArguments)
    for name, floor, epochs, perceptual, preset in (("B", 3e-5, 150, "lpips-vgg", "B"), ("L", 1e-5, 200, "convnext-s", "L")):
        model_args, data_args, loss, args = parse_config_and_args(
            types, ["--config", str(REPO / "examples" / "configs" / f"tokenizer_{name}.yaml"), "--output_dir", "unused",
                    "--bf16", "False", "--dataloader_num_workers", "0"],
        )
        assert model_args.tokenizer_preset == preset and data_args.train_data == "ILSVRC/imagenet-1k"
        assert (loss.l1_weight, loss.perceptual_weight, loss.gan_weight, loss.commitment_weight, loss.ar_weight) == (1, 1, 0.1, 1, 3)
        assert loss.perceptual_loss == perceptual and loss.visual_dropout == 0.5
        assert args.learning_rate == 1e-4 and args.min_learning_rate == floor and args.num_train_epochs == epochs
        assert (args.tokenizer_adam_beta1, args.tokenizer_adam_beta2, args.ar_adam_beta1, args.ar_weight_decay) == (0.0, 0.99, 0.9, 0.03)
        assert json.loads(model_args.compact_ar_overrides)["num_hidden_layers"] == 7


def test_tau_schedule_and_collapse_diagnostics_in_the_logs(tmp_path, image_dir):
    """Issue 15 items 2-3: the Prob-STE tau follows its schedule step by step, and every logging step carries the
    prologue diagnostics of its last batch."""
    trainer = _trainer(
        tmp_path, image_dir, "tau", gan=False, max_steps=4, prologue_temperature_schedule="linear",
        prologue_temperature_start=1.0, prologue_temperature_end=0.2, prologue_temperature_steps=4,
    )
    quantizer = trainer.stage1_model.tokenizer.prologue_quantizer
    seen = []
    trainer.add_callback(type("Probe", (TrainerCallback,), {
        "on_step_end": lambda self, args, state, control, **kw: seen.append(quantizer.temperature),
    })())
    trainer.train()
    assert seen == pytest.approx([1.0, 0.8, 0.6, 0.4])
    logs = _step_logs(trainer)
    assert sorted(logs) == [1, 2, 3, 4]
    for entry in logs.values():
        assert 0 < entry["prologue_p_max_median"] <= 1 and entry["prologue_effective_codes_median"] >= 1
        assert 0 < entry["prologue_distinct_tuples"] <= 1 and "prologue_usage/pos0" in entry
        assert "prologue_label_mi_bits" in entry
