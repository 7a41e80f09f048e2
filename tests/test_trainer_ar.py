"""Stage-2 AR training: sequence layout and loss, class dropout, optimizer groups and schedule, resume, EMA,
refused runs, the pretokenize -> train -> reload round trip and a 2-process (gloo) run equal to 1 process."""

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from prologue_hf import PrologueARForCausalLM, PrologueVocabulary
from prologue_hf.testing import (
    random_pretokenized_dataset,
    tiny_ar,
    tiny_ar_config,
    tiny_tokenizer,
    tiny_tokenizer_config,
)
from prologue_hf.training.ar_recipe import PrologueARScriptArguments, build_ar_config, parse_ar_args, train_ar
from prologue_hf.training.losses import prologue_ar_loss
from prologue_hf.training.pretokenize import (
    PretokenizeConfig,
    PretokenizedInfo,
    load_pretokenized_dataset,
    pretokenize_dataset,
)
from prologue_hf.training.trainer_ar import (
    PrologueARDataCollator,
    PrologueARSampleGridCallback,
    PrologueARTrainer,
    PrologueARTrainingArguments,
    class_dropout_mask,
)

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "examples" / "configs" / "ar_tiny_cpu.yaml"


def make_ids_dataset(path, rows=64, seed=0, tokenizer=None) -> datasets.Dataset:
    """A pretokenized dataset written the way pretokenize_dataset writes one, with random ids (tiny vocabulary)."""
    tokenizer = tokenizer or tiny_tokenizer(seed=0)
    info = PretokenizedInfo.from_tokenizer(tokenizer, num_classes=10, num_images=rows // 2)
    random_pretokenized_dataset(info, rows, seed=seed, views_per_image=2).save_to_disk(str(path))
    return load_pretokenized_dataset(str(path))


@pytest.fixture(scope="module")
def ids_dataset(tmp_path_factory):
    return make_ids_dataset(tmp_path_factory.mktemp("ids") / "ds")


def training_args(output_dir, **overrides) -> PrologueARTrainingArguments:
    values = dict(
        per_device_train_batch_size=8,
        max_steps=6,
        learning_rate=1e-3,
        min_learning_rate=1e-4,
        warmup_steps=2,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    return PrologueARTrainingArguments(str(output_dir), **{**values, **overrides})


def losses(log_history) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in log_history if "loss" in h}


# ------------------------------------------------------------------------------------------- layout and loss
def test_sequence_layout_and_hand_computed_loss():
    # V=4 visual (0..3), P=3 prologue (4..6), EOS 7, classes 8, 9, null 10; sequence [class][p p][EOS][v v v]
    vocab = PrologueVocabulary(4, 3, 2, 3, 2)
    ids = vocab.build_sequence(
        torch.tensor([1, 2]), torch.tensor([[3, 0, 1], [2, 2, 0]]), torch.tensor([[0, 2], [1, 1]], dtype=torch.int16)
    )
    assert ids.tolist() == [[9, 4, 6, 7, 3, 0, 1], [10, 5, 5, 7, 2, 2, 0]]
    logits = torch.randn(2, 7, 11, generator=torch.Generator().manual_seed(0), requires_grad=True)
    array = logits.detach().double().numpy()

    def expected(weights):
        total = 0.0
        for b in range(2):
            for t in range(6):  # position t predicts token t + 1; the class token is never a target
                row = array[b, t]
                log_z = math.log(np.exp(row - row.max()).sum()) + row.max()
                segment = 0 if t < 2 else (1 if t == 2 else 2)
                total += weights[segment] * (log_z - row[ids[b, t + 1]])
        return total / 12

    out = prologue_ar_loss(logits, ids, vocab)
    assert out.loss.item() == pytest.approx(expected((1, 1, 1)), rel=1e-6)
    assert out.loss.item() == pytest.approx(F.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1)).item(), rel=1e-6)
    weighted = prologue_ar_loss(logits, ids, vocab, (2.0, 0.5, 0.0))
    assert weighted.loss.item() == pytest.approx(expected((2.0, 0.5, 0.0)), rel=1e-6)
    # masking: with the visual weight 0 no gradient reaches the visual predictions, nor ever the last position
    weighted.loss.backward()
    grad = logits.grad.abs().sum(-1)  # [B, 7]
    assert torch.all(grad[:, 3:] == 0) and torch.all(grad[:, :3] > 0)
    # per-segment statistics: (CE sum, correct, count) for prologue / EOS / visual
    counts = out.segment_stats[:, 2].tolist()
    assert counts == [4.0, 2.0, 6.0]
    correct = (array[:, :-1].argmax(-1) == ids[:, 1:].numpy()).astype(float)
    assert out.segment_stats[:, 1].tolist() == [correct[:, :2].sum(), correct[:, 2].sum(), correct[:, 3:].sum()]
    assert out.segment_stats[:, 0].sum().item() == pytest.approx(out.token_loss.sum().item(), rel=1e-6)
    with pytest.raises(ValueError, match="input_ids must have shape"):
        prologue_ar_loss(logits[:, :5], ids[:, :5], vocab)


@pytest.mark.parametrize("fused", [True, False])
def test_trainer_loss_is_the_models_causal_lm_loss(ids_dataset, tmp_path, fused):
    model = tiny_ar(seed=0)
    vocab = model.config.vocabulary
    losses = {}
    for over_class_ids in (True, False):
        args = training_args(
            tmp_path, class_dropout_prob=0.0, fused_head_loss=fused, loss_over_class_ids=over_class_ids
        )
        trainer = PrologueARTrainer(model, args, train_dataset=ids_dataset)
        batch = trainer.data_collator([ids_dataset[i] for i in range(8)])
        model.eval()
        losses[over_class_ids] = trainer.compute_loss(model, batch)
    ids = vocab.build_sequence(batch["class_labels"], batch["visual_ids"], batch["prologue_ids"])
    logits = model(input_ids=ids).logits.detach()
    reference = model(input_ids=ids, labels=ids).loss  # transformers' own shifted mean CE, whole vocabulary
    torch.testing.assert_close(losses[True], reference, rtol=1e-6, atol=1e-6)
    # default: the official train_ar.py's CE, whose head has no class rows (softmax over the first class_offset ids)
    official = torch.nn.functional.cross_entropy(
        logits[:, :-1, : vocab.class_offset].reshape(-1, vocab.class_offset), ids[:, 1:].reshape(-1)
    )
    torch.testing.assert_close(losses[False], official, rtol=1e-6, atol=1e-6)
    assert losses[False] < losses[True] - 1e-4  # the class ids' share of the softmax is left out


def test_collator_casts_and_maps_unlabelled_to_null():
    vocab = tiny_ar_config().vocabulary
    collate = PrologueARDataCollator(vocab)
    features = [
        {"visual_ids": np.arange(16, dtype=np.int16), "prologue_ids": np.array([1, 2, 3, 15], np.int16), "label": 4},
        {"visual_ids": np.full(16, 63, np.int16), "prologue_ids": np.zeros(4, np.int16), "label": -1},
    ]
    batch = collate(features)
    assert {k: v.dtype for k, v in batch.items()} == dict.fromkeys(("class_labels", "visual_ids", "prologue_ids"), torch.long)
    assert batch["class_labels"].tolist() == [4, 10] and batch["visual_ids"][1].tolist() == [63] * 16
    with pytest.raises(ValueError, match="visual_ids must lie in"):
        collate([{**features[0], "visual_ids": np.full(16, 64, np.int16)}])
    with pytest.raises(ValueError, match="class_labels must lie in"):
        collate([{**features[0], "label": 11}])


# ------------------------------------------------------------------------------------------- class dropout
def test_class_dropout_rate_and_determinism(ids_dataset, tmp_path):
    masks = torch.stack([class_dropout_mask(0, step, 0, 512, 0.1) for step in range(500)])
    assert abs(masks.float().mean().item() - 0.1) < 0.003  # 256k draws: 5 standard deviations
    assert torch.equal(masks[7], class_dropout_mask(0, 7, 0, 512, 0.1))
    assert not torch.equal(masks[7], class_dropout_mask(0, 7, 1, 512, 0.1))  # micro-batches differ
    assert not torch.equal(masks[7], class_dropout_mask(1, 7, 0, 512, 0.1))  # seeds differ

    trainer = PrologueARTrainer(tiny_ar(), training_args(tmp_path, class_dropout_prob=0.5, seed=3), train_dataset=ids_dataset)
    labels = torch.arange(8)
    first, second = trainer._class_dropout(labels), trainer._class_dropout(labels)  # two micro-batches of step 0
    for out, micro in ((first, 0), (second, 1)):
        mask = class_dropout_mask(3, 0, micro, 8, 0.5)
        assert out.tolist() == torch.where(mask, torch.tensor(10), labels).tolist()
    assert 0 < int((first == 10).sum()) < 8


# ------------------------------------------------------------------------------------------- optimizer
def test_weight_decay_groups(ids_dataset, tmp_path):
    model = tiny_ar()
    names = set(PrologueARTrainer(model, training_args(tmp_path), train_dataset=ids_dataset).get_decay_parameter_names(model))
    assert "model.layers.0.self_attn.q_proj.weight" in names and "lm_head.weight" in names
    assert "model.embed_tokens.weight" not in names
    assert not any("norm" in n for n in names)
    with_embeddings = PrologueARTrainer(model, training_args(tmp_path, decay_embeddings=True), train_dataset=ids_dataset)
    assert "model.embed_tokens.weight" in with_embeddings.get_decay_parameter_names(model)
    args = training_args(tmp_path)
    assert (args.adam_beta1, args.adam_beta2, args.weight_decay, args.max_grad_norm) == (0.9, 0.96, 0.03, 1.0)


def test_lr_schedule_warmup_then_linear_to_floor(ids_dataset, tmp_path):
    trainer = PrologueARTrainer(tiny_ar(), training_args(tmp_path, warmup_steps=2), train_dataset=ids_dataset)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    rates = []
    for _ in range(11):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    expected = [0.0, 5e-4] + [1e-3 - 9e-4 * (s - 2) / 8 for s in range(2, 11)]
    np.testing.assert_allclose(rates, expected, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="min_learning_rate must lie"):
        training_args(tmp_path, min_learning_rate=2e-3)
    bad = PrologueARTrainer(tiny_ar(), training_args(tmp_path, warmup_steps=10), train_dataset=ids_dataset)
    with pytest.raises(ValueError, match="warmup_steps"):
        bad.create_optimizer_and_scheduler(num_training_steps=10)


# ------------------------------------------------------------------------------------------- resume, EMA, GC
def test_resume_gives_the_same_losses_weights_and_ema(ids_dataset, tmp_path):
    args = dict(save_strategy="steps", save_steps=3, ema_halflife_steps=2.0)
    full = PrologueARTrainer(tiny_ar(seed=0, hidden_dropout=0.1, embedding_dropout=0.1), training_args(tmp_path / "a", **args), train_dataset=ids_dataset)
    full.train()
    saved = PrologueARForCausalLM.from_pretrained(tmp_path / "a" / "checkpoint-6" / "ema")
    torch.testing.assert_close(saved.lm_head.weight, full.ema.model.lm_head.weight, rtol=0, atol=0)
    # a run killed while writing checkpoint-6's EMA (saved after trainer_state.json): "latest" means checkpoint-3
    shutil.rmtree(tmp_path / "a" / "checkpoint-6" / "ema")
    resumed = PrologueARTrainer(tiny_ar(seed=5, hidden_dropout=0.1, embedding_dropout=0.1), training_args(tmp_path / "a", **args), train_dataset=ids_dataset)
    resumed.train(resume_from_checkpoint="latest")
    reference, got = losses(full.state.log_history), losses(resumed.state.log_history)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]  # 1-3 come with the checkpoint's trainer state, 4-6 are recomputed
    for step in got:
        assert got[step] == pytest.approx(reference[step], rel=1e-6)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    for name, tensor in full.ema.state_dict().items():
        torch.testing.assert_close(tensor, resumed.ema.state_dict()[name], rtol=1e-6, atol=1e-7)
    assert os.path.isdir(tmp_path / "a" / "checkpoint-6" / "ema")  # the resumed run rewrote checkpoint-6 whole
    # the EMA lags the online weights
    assert not torch.equal(full.ema.model.lm_head.weight, full.model.lm_head.weight.detach())


def test_activation_checkpointing_changes_nothing(ids_dataset, tmp_path):
    runs = []
    for checkpointing in (False, True):
        trainer = PrologueARTrainer(
            tiny_ar(seed=0, hidden_dropout=0.1, embedding_dropout=0.1),  # recomputation must replay the dropout masks
            training_args(tmp_path / str(checkpointing), max_steps=3, warmup_steps=1, activation_checkpointing=checkpointing),
            train_dataset=ids_dataset,
        )
        trainer.train()
        runs.append((losses(trainer.state.log_history), trainer.model.lm_head.weight.detach().clone()))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-6)
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-5, atol=1e-7)


def test_gradient_accumulation_equals_the_large_batch(ids_dataset, tmp_path):
    """loss_is_scaled_for_ga = False: 2 micro-batches of 4 give the step of one batch of 8 (same samples)."""
    runs = []
    for batch, accumulation in ((8, 1), (4, 2)):
        trainer = PrologueARTrainer(
            tiny_ar(seed=0),
            training_args(tmp_path / str(batch), max_steps=3, warmup_steps=1, per_device_train_batch_size=batch,
                          gradient_accumulation_steps=accumulation, class_dropout_prob=0.0),
            train_dataset=ids_dataset,
        )  # fmt: skip
        trainer.train()
        runs.append((trainer.state.log_history, trainer.model.lm_head.weight.detach().clone()))
    for a, b in zip(*(r[0] for r in runs)):
        if "loss" in a:
            assert (a["step"], a["grad_norm"]) == (b["step"], pytest.approx(b["grad_norm"], rel=1e-5))
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-5, atol=1e-7)


def test_bf16_autocast_runs(ids_dataset, tmp_path):
    trainer = PrologueARTrainer(
        tiny_ar(seed=0), training_args(tmp_path, max_steps=2, warmup_steps=1, bf16=True), train_dataset=ids_dataset
    )
    trainer.train()
    first = losses(trainer.state.log_history)[1]
    fp32 = PrologueARTrainer(tiny_ar(seed=0), training_args(tmp_path / "fp32", max_steps=2, warmup_steps=1), train_dataset=ids_dataset)
    fp32.train()
    assert trainer.model.lm_head.weight.dtype == torch.float32  # fp32 master weights
    assert first == pytest.approx(losses(fp32.state.log_history)[1], rel=2e-2) and first != losses(fp32.state.log_history)[1]


# ------------------------------------------------------------------------------------------- refusals
def test_refused_runs(ids_dataset, tmp_path):
    args = training_args(tmp_path)
    wrong_vocab = PrologueARForCausalLM(tiny_ar_config(tiny_tokenizer_config(visual_codebook_size=128)))
    with pytest.raises(ValueError, match="vocabulary does not match the pretokenized dataset's tokenizer"):
        PrologueARTrainer(wrong_vocab, args, train_dataset=ids_dataset)
    other_tokenizer = PrologueARForCausalLM(tiny_ar_config(tokenizer_identity="sha256:ffffffffffffffffffffffffffffffff"))
    with pytest.raises(ValueError, match="tokenizer identity mismatch"):
        PrologueARTrainer(other_tokenizer, args, train_dataset=ids_dataset)
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        PrologueARTrainer(tiny_ar(), args, train_dataset=ids_dataset, image_tokenizer=tiny_tokenizer(seed=1))
    model = tiny_ar()
    PrologueARTrainer(model, args, train_dataset=ids_dataset, image_tokenizer=tiny_tokenizer(seed=0))
    assert model.config.tokenizer_identity == PretokenizedInfo.from_dataset(ids_dataset).tokenizer_identity
    # through the recipe: an AR config file with another vocabulary
    wrong_vocab.config.save_pretrained(tmp_path / "wrong")
    script = PrologueARScriptArguments(dataset_name_or_path="x", ar_config_name_or_path=str(tmp_path / "wrong"))
    with pytest.raises(ValueError, match=r"dataset.s tokenizer sha256:.*visual_vocab_size: AR 128 vs tokenizer 64"):
        build_ar_config(PretokenizedInfo.from_dataset(ids_dataset), script)


# ------------------------------------------------------------------------------------------- end to end
def write_image_folder(root, per_class=4):
    rng = np.random.default_rng(1)
    for c in range(3):
        os.makedirs(root / f"class{c}", exist_ok=True)
        for i in range(per_class):
            PIL.Image.fromarray(rng.integers(0, 256, (36 + i, 40, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


def test_pretokenize_train_reload_round_trip(tmp_path):
    from prologue_hf.training.image_data import load_image_dataset

    tokenizer = tiny_tokenizer(seed=0)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    images = load_image_dataset(str(write_image_folder(tmp_path / "images")))
    ids = pretokenize_dataset(tokenizer, images, PretokenizeConfig(str(tmp_path / "ids"), batch_size=4), source="images")
    assert len(ids) == 120
    script, args = parse_ar_args(
        [
            "--config", str(TINY_YAML),
            "--dataset_name_or_path", str(tmp_path / "ids"),
            "--tokenizer_name_or_path", str(tmp_path / "tokenizer"),
            "--output_dir", str(tmp_path / "run"),
            "--max_steps", "4", "--warmup_steps", "1", "--logging_steps", "2", "--save_steps", "4",
            "--sample_steps", "2", "--sample_class_labels", "0,1,2", "--ema_halflife_steps", "10",
            "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    assert (args.per_device_train_batch_size, args.min_learning_rate, args.use_cpu) == (16, 1e-4, True)
    trainer = train_ar(script, args)
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in history] == [2, 4]
    for entry in history:
        assert 0 <= entry["accuracy_prologue"] <= 1 and 0 <= entry["accuracy_visual"] <= 1
        assert entry["loss"] == pytest.approx(entry["loss"])  # finite
        assert math.isfinite(entry["loss_prologue"]) and math.isfinite(entry["loss_visual"])

    reloaded = PrologueARForCausalLM.from_pretrained(tmp_path / "run")
    assert reloaded.config.tokenizer_identity == PretokenizedInfo.from_dataset(ids).tokenizer_identity
    assert (reloaded.config.num_classes, reloaded.config.hidden_dropout, reloaded.config.hidden_size) == (3, 0.1, 64)
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name
    ema = PrologueARForCausalLM.from_pretrained(tmp_path / "run" / "ema")
    torch.testing.assert_close(ema.lm_head.weight, trainer.ema.model.lm_head.weight, rtol=0, atol=0)
    grids = sorted(os.listdir(tmp_path / "run" / "samples"))
    assert grids == ["step-00000002.png", "step-00000004.png"]
    with PIL.Image.open(tmp_path / "run" / "samples" / grids[-1]) as grid:
        assert grid.size == (64, 64)  # 3 labels -> a 2 x 2 grid of 32px images


def test_sample_grid_is_deterministic(tmp_path):
    callback = PrologueARSampleGridCallback(tiny_tokenizer(), [0, 1, 2, 3], every_n_steps=5, seed=7)
    model = tiny_ar().train()
    first, second = callback.sample_images(model), callback.sample_images(model)
    assert model.training  # restored
    assert len(first) == 4 and first[0].size == (32, 32)
    for a, b in zip(first, second):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="every_n_steps"):
        PrologueARSampleGridCallback(tiny_tokenizer(), [0], every_n_steps=0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    """Same global batch (2 x 4 vs 1 x 8): the gloo DDP run reproduces the single-process loss curve, class dropout
    included (its draws are keyed by step, not by process)."""
    data = tmp_path / "ids"
    make_ids_dataset(data)
    common = [
        "--config", str(TINY_YAML), "--dataset_name_or_path", str(data), "--max_steps", "4", "--warmup_steps", "1",
        "--logging_steps", "1", "--save_steps", "4", "--sample_steps", "0", "--hidden_dropout", "0",
        "--embedding_dropout", "0", "--class_dropout_prob", "0.25", "--disable_tqdm", "true",
    ]  # fmt: skip
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "examples" / "accelerate_configs" / "cpu_2proc.yaml"),
        "--main_process_port", str(_free_port()),
        str(REPO / "examples" / "train_ar.py"), *common,
        "--output_dir", str(tmp_path / "two"), "--per_device_train_batch_size", "4",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    with open(tmp_path / "two" / "checkpoint-4" / "trainer_state.json") as handle:
        two = json.load(handle)["log_history"]

    one = train_ar(*parse_ar_args([*common, "--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "8"]))
    reference = [h for h in one.state.log_history if "loss" in h]
    distributed = [h for h in two if "loss" in h]
    assert [h["step"] for h in distributed] == [1, 2, 3, 4]
    for a, b in zip(reference, distributed):
        for key in ("loss", "loss_prologue", "loss_visual", "accuracy", "class_drop_rate", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=2e-5, abs=1e-7), (a["step"], key)
    assert sum(h["class_drop_rate"] for h in reference) > 0  # the dropout was exercised
    final = PrologueARForCausalLM.from_pretrained(tmp_path / "two")
    torch.testing.assert_close(final.lm_head.weight, one.model.lm_head.weight, rtol=1e-4, atol=1e-6)


def test_launch_without_process_group_is_refused(tmp_path):
    """Two launched processes on a machine without GPUs and without use_cpu: accelerate builds no process group, so
    each process would train alone and write the same output_dir; the trainer stops both with the remedy."""
    data = tmp_path / "ids"
    make_ids_dataset(data)
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "examples" / "accelerate_configs" / "cpu_2proc.yaml"),
        "--main_process_port", str(_free_port()),
        str(REPO / "examples" / "train_ar.py"), "--config", str(TINY_YAML), "--use_cpu", "false",
        "--dataset_name_or_path", str(data), "--max_steps", "2", "--warmup_steps", "0", "--sample_steps", "0",
        "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "true",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode != 0
    assert "the launcher started 2 processes (WORLD_SIZE=2) but accelerate set up no process group" in result.stderr
    assert not (tmp_path / "out" / "checkpoint-2").exists()


def test_check_distributed_launch(tmp_path, monkeypatch, caplog):
    from transformers.utils import logging as hf_logging

    from prologue_hf.training.launch import check_distributed_launch

    args = PrologueARTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    check_distributed_launch(args)  # one process, nothing asked: fine
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2.*use_cpu=True"):
        check_distributed_launch(args)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            check_distributed_launch(args)
    finally:
        hf_logging.disable_propagation()
    assert "asked for FSDP (ACCELERATE_USE_FSDP=true) but accelerate set up NO" in caplog.text


# ------------------------------------------------------------------------------------------- shipped configs
PAPER_STAGE2 = {  # appendix E: (AR preset, lr, floor, global batch, paper epochs, weight decay, GPUs written for)
    "B-B": ("B", 2e-4, 5e-5, 512, 400, 0.03, 8),
    "B-L": ("L", 2e-4, 5e-5, 512, 400, 0.03, 8),
    "B-XL": ("XL", 2e-4, 5e-5, 512, 400, 0.03, 32),
    "L-B": ("B", 4e-4, 1e-5, 2048, 800, 0.03, 8),
    "L-L": ("L", 4e-4, 1e-5, 2048, 800, 0.03, 8),
    "L-XL": ("XL", 4e-4, 1e-5, 2048, 950, 0.05, 32),
}


@pytest.mark.parametrize("pair", sorted(PAPER_STAGE2))
def test_paper_configs_hold_the_appendix_e_values(pair, tmp_path):
    preset, lr, floor, batch, epochs, decay, gpus = PAPER_STAGE2[pair]
    script, args = parse_ar_args(
        ["--config", str(REPO / "examples" / "configs" / f"ar_{pair}.yaml"), "--dataset_name_or_path", "ids",
         "--output_dir", str(tmp_path), "--use_cpu", "true"]  # bf16 is refused without a GPU unless use_cpu
    )  # fmt: skip
    assert script.ar_preset == preset and script.hidden_dropout == 0.1 and script.embedding_dropout == 0.1
    assert (args.learning_rate, args.min_learning_rate, args.weight_decay) == (lr, floor, decay)
    assert (args.adam_beta1, args.adam_beta2, args.max_grad_norm, args.class_dropout_prob) == (0.9, 0.96, 1.0, 0.1)
    assert args.per_device_train_batch_size * gpus * args.gradient_accumulation_steps == batch
    assert args.lr_scheduler_kwargs == {"lr_end": floor, "power": 1.0} and args.bf16
    # 1.28M ImageNet images per paper epoch; the 800-epoch runs use the official 500,000 steps
    assert args.max_steps == pytest.approx(epochs * 1_281_167 / batch, rel=1e-3)
