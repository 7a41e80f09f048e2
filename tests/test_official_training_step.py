"""The official training mode against the official stage-1 step fixture (issue 15, Must-show 1).

The fixture (tests/fixtures/official-prologue-stage1-step/README.md) was made with the unmodified official trainer:
starting weights in the stage-1 slots, one batch, every random draw, every loss term of four global steps, per-
parameter gradient norms and the weights after both iterations.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn.utils import parametrize

from prologue_hf import PrologueARForCausalLM, PrologueTokenizerModel
from prologue_hf.conversion.official import convert_official_joint_ar, convert_official_tokenizer
from prologue_hf.conversion.official_config import OfficialConfig
from prologue_hf.conversion.official_stage1 import (
    load_official_stage1,
    load_official_stage1_discriminator,
    official_state,
)
from prologue_hf.models.official_parametrization import (
    fold_official_parametrization,
    folded_copy,
    init_official_parametrization,
    is_official_parametrized,
    parametrize_official_tokenizer,
)
from prologue_hf.training.official_parity import (
    LOGIT_TOLERANCE,
    LOSS_TOLERANCE,
    WEIGHT_OUTLIER_FRACTION,
    WEIGHT_OUTLIER_TOLERANCE,
    replay_official_step_fixture,
)
from prologue_hf.training.official_stage1 import (
    OfficialStage1Settings,
    OfficialStage1Stepper,
    official_ar_weight_decay_groups,
    quantizer_entropy_terms,
)

FIXTURE = "official-prologue-stage1-step"


@pytest.fixture(scope="module")
def step_dir():
    from conftest import official_fixture_path

    return official_fixture_path(FIXTURE)


def test_stage1_slots_load_into_the_official_parameterisation_bit_exactly(step_dir):
    models = load_official_stage1(step_dir / "start", step_dir / "config.yaml")
    names = json.loads((step_dir / "manifest.json").read_text())["grad_norm_param_names"]
    for module, slot in (("enc", "model"), ("dec", "model_1"), ("ar", "model_5")):
        official = load_file(str(step_dir / "start" / f"{slot}.safetensors"))
        ours = official_state(models.maps()[module])
        assert list(ours) == names[module]  # every trained official tensor, in the official named_parameters order
        for name, value in ours.items():
            assert torch.equal(value, official[name]), name


def test_replay_reproduces_every_loss_logit_id_gradient_norm_and_weight(step_dir):
    report = replay_official_step_fixture(step_dir)
    assert report.ok, report.failures
    assert report.ids_equal
    expected_terms = {"loss", "l1_loss", "vqloss", "visual_vq_quant_loss", "semantic_vq_quant_loss", "prior_enc_loss",
                      "semantic_prior_enc_loss", "eos_prior_enc_loss", "visual_prior_enc_loss", "prior_ar_loss",
                      "semantic_prior_ar_loss", "eos_prior_ar_loss", "visual_prior_ar_loss",
                      "visual_vq_entropy_loss", "semantic_vq_entropy_loss"}
    assert expected_terms <= set(report.losses)
    assert max(report.losses.values()) < LOSS_TOLERANCE
    assert report.logits < LOGIT_TOLERANCE
    assert set(report.grad_norms) == {"enc", "dec", "ar"} and max(report.grad_norms.values()) < 1e-4
    assert set(report.weights) == {f"iter{i}/{m}" for i in (1, 2) for m in ("enc", "dec", "ar")}
    for stats in report.weights.values():
        assert stats["max_abs"] < WEIGHT_OUTLIER_TOLERANCE and stats["fraction_above_1e-6"] <= WEIGHT_OUTLIER_FRACTION


def test_replay_detects_a_wrong_weight_and_a_wrong_loss(step_dir, tmp_path):
    folder = tmp_path / "fixture"
    shutil.copytree(step_dir, folder)
    weights = load_file(str(folder / "iter2" / "model_5.safetensors"))
    weights["ar_model.layers.0.gate1.weight"] = weights["ar_model.layers.0.gate1.weight"] + 1e-3
    save_file(weights, str(folder / "iter2" / "model_5.safetensors"), metadata={"format": "pt"})
    losses = load_file(str(folder / "losses.safetensors"))
    losses["g2_loss_vqloss"] = losses["g2_loss_vqloss"] + 1e-3
    save_file(losses, str(folder / "losses.safetensors"))
    report = replay_official_step_fixture(folder)
    assert not report.ok
    assert any("iter2 ar weights" in f for f in report.failures)
    assert any("g2 vqloss" in f for f in report.failures)
    assert report.weights["iter1/ar"]["max_abs"] < WEIGHT_OUTLIER_TOLERANCE  # iteration 1 still matches


def test_check_command_exit_codes(step_dir, tmp_path):
    script = [sys.executable, "examples/check_official_training_step.py", "--fixture"]
    ok = subprocess.run(script + [str(step_dir)], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ok.returncode == 0, ok.stderr
    assert "visual_prior_enc_loss" in ok.stdout and ok.stdout.strip().endswith("OK")
    missing = subprocess.run(script + [str(tmp_path)], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert missing.returncode == 2 and "config.yaml is missing" in missing.stderr


def test_ar_weight_decay_groups_follow_the_official_rule(step_dir):
    models = load_official_stage1(step_dir / "start", step_dir / "config.yaml")
    groups = json.loads((step_dir / "manifest.json").read_text())["stage1_settings"]["ar_weight_decay_groups"]
    ar_map = models.ar_map
    decay, no_decay = official_ar_weight_decay_groups(ar_map)
    expected_decay = {id(p) for name in groups["decay"] for p in ar_map.parameters(name)}
    expected_no_decay = {id(p) for name in groups["no_decay"] for p in ar_map.parameters(name)}
    assert {id(p) for p in decay} == expected_decay
    assert {id(p) for p in no_decay} == expected_no_decay


def test_fold_gives_the_plain_models_with_the_same_outputs(step_dir, tmp_path):
    config = OfficialConfig.from_yaml(step_dir / "config.yaml")
    models = load_official_stage1(step_dir / "start", config)
    pixels = load_file(str(step_dir / "inputs.safetensors"))["images"]
    reference = convert_official_tokenizer(step_dir / "start", config, weights="online").eval()
    reference_ar = convert_official_joint_ar(step_dir / "start", config, weights="online").eval()
    tokenizer, ar = models.tokenizer.eval(), models.ar.eval()
    ids = torch.tensor([[3, 70, 64, 80] + [5] * 17])
    with torch.no_grad():
        before = tokenizer(pixels)
        assert torch.equal(before.visual_ids, reference.encode(pixels).visual_ids)
        torch.testing.assert_close(before.reconstruction, reference(pixels).reconstruction, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ar(ids).logits, reference_ar(ids).logits, rtol=1e-5, atol=1e-5)
        logits_before = ar(ids).logits
    fold_official_parametrization(tokenizer)
    fold_official_parametrization(ar)
    assert not is_official_parametrized(tokenizer) and not is_official_parametrized(ar)
    assert not any(parametrize.is_parametrized(m) for m in [*tokenizer.modules(), *ar.modules()])
    assert set(tokenizer.state_dict()) == set(reference.state_dict())
    assert set(ar.state_dict()) == set(reference_ar.state_dict())
    with torch.no_grad():
        after = tokenizer(pixels)
        assert torch.equal(after.visual_ids, before.visual_ids) and torch.equal(after.prologue_ids, before.prologue_ids)
        torch.testing.assert_close(after.reconstruction, before.reconstruction, rtol=0, atol=1e-6)
        torch.testing.assert_close(ar(ids).logits, logits_before, rtol=0, atol=1e-5)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    ar.save_pretrained(tmp_path / "ar")
    loaded = PrologueTokenizerModel.from_pretrained(tmp_path / "tokenizer")
    loaded_ar = PrologueARForCausalLM.from_pretrained(tmp_path / "ar")
    for name, value in tokenizer.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    for name, value in ar.state_dict().items():
        assert torch.equal(loaded_ar.state_dict()[name], value), name


def test_the_trained_and_folded_models_run_in_the_pipeline(step_dir):
    from prologue_hf.pipelines import ProloguePipeline

    config = OfficialConfig.from_yaml(step_dir / "config.yaml")
    models = load_official_stage1(step_dir / "start", config)
    stepper = OfficialStage1Stepper(models.tokenizer, models.ar, models.maps(), OfficialStage1Settings.from_official_config(config))
    pixels = load_file(str(step_dir / "inputs.safetensors"))["images"]
    torch.manual_seed(0)
    logs = stepper.iteration(pixels, torch.tensor([3, 7, 0, 9]))
    assert {"enc/loss", "enc/prior_enc_loss", "ar/prior_ar_loss"} <= set(logs)
    pipe = ProloguePipeline(
        tokenizer=fold_official_parametrization(models.tokenizer).eval(), ar=fold_official_parametrization(models.ar).eval()
    )
    first = pipe([1, 2], generator=torch.Generator().manual_seed(0), output_type="pt").images
    second = pipe([1, 2], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert first.shape == (2, 3, 32, 32) and torch.isfinite(first).all()
    assert torch.equal(first, second)


def test_injected_and_drawn_masks_agree(step_dir):
    """Without injected draws the stepper draws from torch's generator in the official order (class drop [B, 1],
    then visual dropout [B]); with the same seed the two runs take identical steps."""
    config = OfficialConfig.from_yaml(step_dir / "config.yaml")
    pixels = load_file(str(step_dir / "inputs.safetensors"))["images"]
    settings = OfficialStage1Settings.from_official_config(config)
    settings.label_drop_prob = 0.5
    runs = []
    for inject in (False, True):
        models = load_official_stage1(step_dir / "start", config)
        stepper = OfficialStage1Stepper(models.tokenizer, models.ar, models.maps(), settings)
        torch.manual_seed(1)
        label_u, vis_u, vis_u2 = torch.rand(4, 1), torch.rand(4), torch.rand(4)
        torch.manual_seed(1)
        if inject:
            enc = stepper.encoder_step(pixels, torch.tensor([3, 7, 0, 9]), (label_u < 0.5)[:, 0], vis_u < 0.5)
            ar = stepper.ar_step(vis_u2 < 0.5)
        else:
            enc = stepper.encoder_step(pixels, torch.tensor([3, 7, 0, 9]))
            ar = stepper.ar_step()
        runs.append((enc, ar, official_state(models.ar_map)))
    (enc_a, ar_a, w_a), (enc_b, ar_b, w_b) = runs
    assert torch.equal(enc_a.tensors["class_ids"], enc_b.tensors["class_ids"])
    assert torch.equal(enc_a.tensors["class_ids"], torch.where((label_u < 0.5)[:, 0], 10, torch.tensor([3, 7, 0, 9])))
    assert torch.equal(ar_a.tensors["visual_drop_mask"], vis_u2 < 0.5)
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)


def test_ar_step_needs_an_encoder_step_first(step_dir):
    config = OfficialConfig.from_yaml(step_dir / "config.yaml")
    models = load_official_stage1(step_dir / "start", config)
    stepper = OfficialStage1Stepper(models.tokenizer, models.ar, models.maps(), OfficialStage1Settings())
    with pytest.raises(RuntimeError, match="call encoder_step first"):
        stepper.ar_step()


def test_discriminator_slot_is_refused_clearly(step_dir):
    with pytest.raises(NotImplementedError, match="slot 4"):
        load_official_stage1_discriminator(step_dir / "start")


def test_fresh_official_init_is_near_identity():
    from prologue_hf.testing import tiny_tokenizer_config

    tokenizer = PrologueTokenizerModel(tiny_tokenizer_config()).eval()
    enc_map, dec_map = parametrize_official_tokenizer(tokenizer, cond_dim=16, num_labels=11)
    init_official_parametrization([enc_map, dec_map], generator=torch.Generator().manual_seed(0))
    gate = tokenizer.encoder.layers[0].gate_attn
    assert gate.shape == (tokenizer.config.hidden_size,)
    assert 0 < float(gate.detach().abs().max()) < 1e-3  # official gates start ~1e-5 * |c|
    torch.testing.assert_close(tokenizer.encoder.layers[0].norm1.weight, torch.ones_like(gate), rtol=0, atol=1e-3)
    assert torch.equal(enc_map.read("enc.cond_proj.0.bias"), torch.zeros(16))


def test_entropy_terms_by_hand():
    logits = torch.tensor([[[0.5, -0.5], [0.0, 0.0]]])
    terms = quantizer_entropy_terms(logits, temperature=1.0, eps=0.0)
    p = torch.softmax(torch.tensor([0.5, -0.5]), -1)
    h1 = float(-(p * p.log()).sum())
    h2 = float(torch.log(torch.tensor(2.0)))
    mean = (p + torch.tensor([0.5, 0.5])) / 2
    assert terms["sample_entropy"].item() == pytest.approx((h1 + h2) / 2, abs=1e-6)
    assert terms["batch_entropy"].item() == pytest.approx(float(-(mean * mean.log()).sum()), abs=1e-6)
    assert terms["entropy_loss"].item() == pytest.approx(terms["sample_entropy"].item() - terms["batch_entropy"].item())


def test_stage1_ema_slots_are_read_by_name(step_dir):
    """The fixture stores the online slots only: asking for the EMA ones names the missing shard."""
    with pytest.raises(FileNotFoundError, match="model_2.safetensors"):
        load_official_stage1(step_dir / "start", step_dir / "config.yaml", weights="ema")
    with pytest.raises(ValueError, match="weights must be one of"):
        load_official_stage1(step_dir / "start", step_dir / "config.yaml", weights="best")


def test_tied_head_ar_trains_and_folds():
    """A tied AR head (official tied_embedding: the head is semantic_emb): the stepper trains it, the head stays tied
    to the embedding, and the folded model computes what the parametrized one does."""
    from prologue_hf.models.official_parametrization import parametrize_official_ar
    from prologue_hf.testing import tiny_ar_config, tiny_tokenizer_config

    torch.manual_seed(0)
    tokenizer = PrologueTokenizerModel(tiny_tokenizer_config())
    ar = PrologueARForCausalLM(
        tiny_ar_config(tie_word_embeddings=True, use_qk_norm=True, rope_axes_dim=[6, 4, 6], num_classes=10)
    )
    enc_map, dec_map = parametrize_official_tokenizer(tokenizer, cond_dim=8, num_labels=11)
    ar_map = parametrize_official_ar(ar, cond_dim=8)
    assert "ar_model.out.weight" not in ar_map
    init_official_parametrization([enc_map, dec_map, ar_map], generator=torch.Generator().manual_seed(0))
    stepper = OfficialStage1Stepper(
        tokenizer, ar, {"enc": enc_map, "dec": dec_map, "ar": ar_map}, OfficialStage1Settings(label_drop_prob=0.5)
    )
    before = ar_map.read("semantic_emb.weight").clone()
    logs = stepper.iteration(torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([1, 2, 3, -1]))
    assert all(math.isfinite(v) for v in logs.values())
    assert not torch.equal(ar_map.read("semantic_emb.weight"), before)
    assert ar.lm_head.weight is ar.model.embed_tokens.weight
    ids = torch.tensor([[3, 70, 64, 75, 66, 80] + [5] * 16])
    with torch.no_grad():
        expected = ar.eval()(ids).logits
        torch.testing.assert_close(folded_copy(ar).eval()(ids).logits, expected, rtol=0, atol=1e-5)


def test_replay_refuses_settings_it_cannot_reproduce(step_dir, tmp_path):
    folder = tmp_path / "fixture"
    shutil.copytree(step_dir, folder)
    text = (folder / "config.yaml").read_text()
    assert "DO_L1-DO_GAN_G-DO_PRIOR_ENC" in text and "grad_clip_ar: 0.0" in text
    (folder / "config.yaml").write_text(
        text.replace("DO_L1-DO_GAN_G-DO_PRIOR_ENC", "DO_L1-DO_LPIPS-DO_GAN_G-DO_PRIOR_ENC").replace(
            "grad_clip_ar: 0.0", "grad_clip_ar: 1.0"
        )
    )
    with pytest.raises(NotImplementedError, match="DO_LPIPS") as error:
        replay_official_step_fixture(folder)
    assert "grad_clip_ar" in str(error.value)
