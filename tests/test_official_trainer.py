"""Stage 1 under transformers.Trainer in training_mode='official' (issue 15, Must-show 1: the switch)."""

import json
import os

import numpy as np
import pytest
import torch
from transformers import set_seed

from prologue_hf import PrologueARForCausalLM, PrologueTokenizerModel
from prologue_hf.models.official_parametrization import is_official_parametrized
from prologue_hf.testing import TINY_AR_KWARGS, TINY_TOKENIZER_KWARGS
from prologue_hf.training.image_data import (
    ImageDataArguments,
    ImageTrainingCollator,
    ImageTransform,
    load_training_images,
)
from prologue_hf.training.losses import PrologueStage1LossConfig
from prologue_hf.training.official_trainer import (
    OFFICIAL_STATE_NAME,
    OfficialOptimizers,
    OfficialPrologueTokenizerTrainer,
)
from prologue_hf.training.trainer_tokenizer import (
    PrologueStage1ModelArguments,
    PrologueTokenizerTrainingArguments,
    build_stage1_model,
)

OFFICIAL_AR = {**TINY_AR_KWARGS, "tie_word_embeddings": False, "use_qk_norm": True, "rope_axes_dim": [6, 4, 6]}


pytestmark = pytest.mark.usefixtures("one_thread")  # shared CPUs: see conftest.one_thread


def _trainer(tmp_path, image_dir, name, *, gan=True, loss=None, **arg_overrides):
    loss_config = PrologueStage1LossConfig(**{
        "perceptual_loss": "none", "gan_weight": 0.1 if gan else 0.0, "lecam_weight": 0.0, "r1_weight": 0.0,
        "ar_label_drop_prob": 0.5, **(loss or {}),
    })
    model_args = PrologueStage1ModelArguments(
        tokenizer_overrides=json.dumps(TINY_TOKENIZER_KWARGS),
        compact_ar_overrides=json.dumps(OFFICIAL_AR),
        discriminator_overrides=json.dumps({"hidden_size": 8}),
        num_classes=2,
    )
    set_seed(0)
    model = build_stage1_model(model_args, loss_config)
    defaults = dict(
        output_dir=str(tmp_path / name), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
        min_learning_rate=1e-4, warmup_steps=1, logging_steps=1, save_steps=1000, ema_halflife_steps=5,
        report_to="none", seed=0, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, max_grad_norm=0.0,
        training_mode="official", official_cond_dim=16,
    )
    args = PrologueTokenizerTrainingArguments(**{**defaults, **arg_overrides})
    dataset = load_training_images(ImageDataArguments(train_data=str(image_dir), cache_dir=str(tmp_path / "hf-cache")))
    collator = ImageTrainingCollator(ImageTransform(32), seed=0)
    return OfficialPrologueTokenizerTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)


def test_official_run_logs_both_steps_and_saves_plain_models(tmp_path, image_dir):
    trainer = _trainer(tmp_path, image_dir, "run")
    stage1 = trainer.stage1_model
    assert is_official_parametrized(stage1.tokenizer) and is_official_parametrized(stage1.compact_ar)
    start = {k: v.clone() for k, v in stage1.compact_ar.state_dict().items()}
    trainer.train()
    logs = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    assert sorted(logs) == [1, 2, 3, 4]
    for entry in logs.values():
        for key in ("enc_loss", "enc_l1_loss", "enc_prior_enc_loss", "enc_vqloss", "ar_prior_ar_loss",
                    "lr_encoder", "lr_decoder", "lr_compact_ar", "prologue_p_max_median", "enc_gan_generator"):
            assert key in entry, key
        assert np.isfinite(entry["loss"])
        # the logged encoder-step loss is the sum of its parts (lambda = 3 on the CE, detached VQ terms included)
        parts = entry["enc_l1_loss"] + entry["enc_vqloss"] + entry["enc_prior_enc_loss"]
        assert entry["enc_loss"] == pytest.approx(parts + 0.1 * entry["enc_gan_generator"], rel=1e-4)
        assert entry["enc_prior_enc_loss"] == pytest.approx(3 * entry["enc_raw_prior_enc_loss"], rel=1e-5)
    # the Trainer's schedule reaches the stepper's groups: the same rate as the discriminator's, decaying
    assert all(entry["lr_encoder"] == pytest.approx(entry["lr_discriminator"]) for entry in logs.values())
    rates = [logs[step]["lr_compact_ar"] for step in (1, 2, 3, 4)]
    assert rates == sorted(rates, reverse=True) and rates[0] > rates[-1]
    assert any(not torch.equal(start[k], v) for k, v in stage1.compact_ar.state_dict().items())
    # the saved folders are plain models computing what the parametrized ones compute
    out = tmp_path / "run" / "checkpoint-4"
    tokenizer = PrologueTokenizerModel.from_pretrained(out / "tokenizer_online")
    ar = PrologueARForCausalLM.from_pretrained(out / "compact_ar")
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    ids = torch.tensor([[2, 70, 64, 75, 66, 80] + [3] * 16])
    stage1.eval()
    with torch.no_grad():
        torch.testing.assert_close(tokenizer(pixels).reconstruction, stage1.tokenizer(pixels).reconstruction, rtol=0, atol=1e-5)
        torch.testing.assert_close(ar(ids).logits, stage1.compact_ar(ids).logits, rtol=0, atol=1e-5)
    assert (out / OFFICIAL_STATE_NAME).is_file()
    assert PrologueTokenizerModel.from_pretrained(out / "tokenizer").config.num_prologue_tokens == 4  # EMA folder


def test_resume_continues_exactly(tmp_path, image_dir):
    full = _trainer(tmp_path, image_dir, "full", gan=False)
    full.train()
    first = _trainer(tmp_path, image_dir, "parts", gan=False, max_steps=4, save_steps=2)
    first.train()
    resumed = _trainer(tmp_path, image_dir, "parts", gan=False, max_steps=4, save_steps=2)
    resumed.train(resume_from_checkpoint=os.path.join(tmp_path / "parts", "checkpoint-2"))
    for key, value in full.stage1_model.state_dict().items():
        assert torch.equal(resumed.stage1_model.state_dict()[key], value), key
    assert isinstance(resumed.optimizer.optimizer if hasattr(resumed.optimizer, "optimizer") else resumed.optimizer, OfficialOptimizers)


def test_match_init_keeps_the_function(tmp_path, image_dir):
    loss_config = PrologueStage1LossConfig(perceptual_loss="none", gan_weight=0.0)
    model_args = PrologueStage1ModelArguments(
        tokenizer_overrides=json.dumps(TINY_TOKENIZER_KWARGS), compact_ar_overrides=json.dumps(OFFICIAL_AR), num_classes=2
    )
    set_seed(0)
    model = build_stage1_model(model_args, loss_config).eval()
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    ids = torch.tensor([[2, 70, 64, 75, 66, 80] + [3] * 16])
    with torch.no_grad():
        before, before_ar = model.tokenizer(pixels).reconstruction, model.compact_ar(ids).logits
    args = PrologueTokenizerTrainingArguments(
        output_dir=str(tmp_path / "m"), report_to="none", use_cpu=True, training_mode="official",
        official_parametrization_init="match", max_grad_norm=0.0,
    )
    trainer = OfficialPrologueTokenizerTrainer(model=model, args=args)
    stage1 = trainer.stage1_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(stage1.tokenizer(pixels).reconstruction, before, rtol=0, atol=1e-5)
        torch.testing.assert_close(stage1.compact_ar(ids).logits, before_ar, rtol=0, atol=1e-5)
    gate = stage1.tokenizer.encoder.layers[0].parametrizations.gate_attn[0].weight
    assert gate.abs().max() > 0  # W is the official init, the bias absorbed the rest


def test_bad_official_settings(tmp_path):
    with pytest.raises(ValueError, match="training_mode"):
        PrologueTokenizerTrainingArguments(output_dir=str(tmp_path), training_mode="joint", report_to="none")
    with pytest.raises(ValueError, match="official_parametrization_init"):
        PrologueTokenizerTrainingArguments(output_dir=str(tmp_path), official_parametrization_init="x", report_to="none")
    loss_config = PrologueStage1LossConfig(perceptual_loss="none", gan_weight=0.0)
    plain_ar = PrologueStage1ModelArguments(
        tokenizer_overrides=json.dumps(TINY_TOKENIZER_KWARGS), compact_ar_overrides=json.dumps(TINY_AR_KWARGS), num_classes=2
    )
    args = PrologueTokenizerTrainingArguments(output_dir=str(tmp_path / "y"), report_to="none", use_cpu=True, training_mode="official")
    with pytest.raises(ValueError, match="use_qk_norm"):
        OfficialPrologueTokenizerTrainer(model=build_stage1_model(plain_ar, loss_config), args=args)


def test_gradient_accumulation_equals_the_big_batch(tmp_path, image_dir):
    # deterministic draws (no visual dropout, every class dropped), so only the batching differs: n micro-batches of
    # encoder steps, one encoder update, their n AR steps on the cached ids, one AR update
    loss = {"visual_dropout": 0.0, "ar_label_drop_prob": 1.0}
    big = _trainer(tmp_path, image_dir, "big", gan=False, loss=loss, max_steps=2)
    big.train()
    small = _trainer(tmp_path, image_dir, "small", gan=False, loss=loss, max_steps=2, per_device_train_batch_size=2,
                     gradient_accumulation_steps=2)
    small.train()
    for key, value in big.stage1_model.state_dict().items():
        torch.testing.assert_close(small.stage1_model.state_dict()[key], value, rtol=0, atol=5e-6, msg=key)
    # with a discriminator: it accumulates too and steps once per optimizer step
    gan = _trainer(tmp_path, image_dir, "gan", max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    gan.train()
    steps = {float(s["step"]) for s in gan.discriminator_optimizer.state_dict()["state"].values()}
    assert steps == {2.0}
