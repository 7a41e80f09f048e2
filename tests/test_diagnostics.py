"""Prologue collapse diagnostics, the Prob-STE tau schedule and the codebook init (issue 15, items 2 and 3)."""

import math

import pytest
import torch

from prologue_hf import PrologueTokenizerModel
from prologue_hf.testing import tiny_tokenizer_config
from prologue_hf.training.diagnostics import (
    distinct_tuples,
    model_prologue_diagnostics,
    mutual_information_bits,
    per_position_usage,
    prologue_collapse_warning,
    prologue_diagnostics,
    random_feature_softmax_geometry,
    softmax_sharpness,
    temperature_for_p_max,
)
from prologue_hf.training.tau_schedule import ProbSTETemperatureSchedule, temperature_schedule_from_args

IDS = torch.tensor([[0, 1, 2], [0, 1, 3], [0, 2, 3], [0, 1, 3]])


def test_usage_and_tuples_by_hand():
    assert per_position_usage(IDS, 8).tolist() == [1 / 8, 2 / 8, 2 / 8]
    assert distinct_tuples(IDS) == 3
    stats = prologue_diagnostics(IDS, 8)
    assert stats["prologue_usage/pos1"] == 0.25 and stats["prologue_usage_mean"] == pytest.approx(5 / 24)
    assert stats["prologue_distinct_tuples"] == 0.75
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        per_position_usage(IDS, 3)


def test_softmax_sharpness_by_hand():
    logits = torch.tensor([[math.log(3.0), 0.0, 0.0]])  # tau 1: p = [3/5, 1/5, 1/5]
    stats = softmax_sharpness(logits, 1.0)
    p = torch.tensor([0.6, 0.2, 0.2])
    assert stats["p_max_median"] == pytest.approx(0.6)
    assert stats["top_gap_median"] == pytest.approx(0.4)
    assert stats["effective_codes_median"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-6)
    # tau shrinks -> sharper
    assert softmax_sharpness(logits, 0.1)["p_max_median"] > 0.99


def test_mutual_information_by_hand():
    labels = torch.tensor([0, 0, 1, 1])
    assert mutual_information_bits(torch.tensor([5, 5, 7, 7]), labels) == pytest.approx(1.0)  # code = label
    assert mutual_information_bits(torch.tensor([5, 5, 5, 5]), labels) == pytest.approx(0.0)  # constant code
    assert mutual_information_bits(torch.tensor([5, 7, 5, 7]), labels) == pytest.approx(0.0)  # independent
    stats = prologue_diagnostics(torch.tensor([[1, 5], [1, 5], [2, 5], [2, 5]]), 8, labels=torch.tensor([0, 0, 1, -1]))
    # unlabelled row dropped: position 0 = [1, 1, 2] vs [0, 0, 1] (1 bit... of H(label)=0.918), position 1 constant
    h = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert stats["prologue_label_mi_bits"] == pytest.approx(h / 2)


def test_collapse_warning():
    assert prologue_collapse_warning(torch.zeros(8, 4, dtype=torch.long)) is not None
    nearly = torch.cat([torch.zeros(9, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long)])
    assert "9/10" in prologue_collapse_warning(nearly)
    assert prologue_collapse_warning(torch.arange(32).reshape(8, 4)) is None
    assert prologue_collapse_warning(torch.zeros(3, 4, dtype=torch.long)) is None  # too small to judge


def test_issue_p_max_figures_reproduce():
    """Issue 15's figures: 1024 x 14 at tau 0.1 -> median p_max 0.085 (~112 codes), 64 x 8 at 0.1 -> 0.37 (~7)."""
    paper = random_feature_softmax_geometry(1024, 14, 0.1)
    demo = random_feature_softmax_geometry(64, 8, 0.1)
    assert paper["p_max_median"] == pytest.approx(0.085, abs=0.005)
    assert 100 < paper["effective_codes_median"] < 125
    assert demo["p_max_median"] == pytest.approx(0.37, abs=0.03)
    assert 6 < demo["effective_codes_median"] < 9
    tau = temperature_for_p_max(paper["p_max_median"], 64, 8)
    assert 0.28 < tau < 0.38  # the issue: "would need tau ~ 0.3"
    assert random_feature_softmax_geometry(64, 8, tau)["p_max_median"] == pytest.approx(paper["p_max_median"], abs=1e-3)


def test_model_diagnostics_on_a_tiny_tokenizer():
    torch.manual_seed(0)
    tokenizer = PrologueTokenizerModel(tiny_tokenizer_config()).eval()
    pixels = torch.rand(6, 3, 32, 32) * 2 - 1
    stats, warning = model_prologue_diagnostics(tokenizer, pixels, torch.tensor([0, 1, 2, 0, 1, 2]))
    encoded = tokenizer.encode(pixels)
    expected = prologue_diagnostics(
        encoded.prologue_ids, tokenizer.config.prologue_codebook_size, encoded.prologue_logits,
        tokenizer.config.prologue_temperature, torch.tensor([0, 1, 2, 0, 1, 2]),
    )
    assert stats == expected
    assert {"prologue_p_max_median", "prologue_effective_codes_median", "prologue_top_gap_median",
            "prologue_label_mi_bits", "prologue_distinct_tuples"} <= set(stats)
    assert warning == prologue_collapse_warning(encoded.prologue_ids)
    two_d = PrologueTokenizerModel(tiny_tokenizer_config(num_prologue_tokens=0))
    assert model_prologue_diagnostics(two_d, pixels) == ({}, None)


@pytest.mark.parametrize(
    ("kind", "mid"), [("linear", 0.55), ("cosine", 0.55), ("exponential", math.sqrt(0.1)), ("constant", 1.0)]
)
def test_tau_schedule_values(kind, mid):
    schedule = ProbSTETemperatureSchedule(1.0, 0.1, 100, kind)
    assert schedule(0) == pytest.approx(1.0)
    assert schedule(50) == pytest.approx(mid)
    assert schedule(100) == pytest.approx(0.1 if kind != "constant" else 1.0)
    assert schedule(10_000) == pytest.approx(0.1 if kind != "constant" else 1.0)
    assert ProbSTETemperatureSchedule(1.0, 0.1, 100, "cosine")(25) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_tau_schedule_refuses_bad_values():
    with pytest.raises(ValueError, match="kind"):
        ProbSTETemperatureSchedule(1.0, 0.1, 10, "step")
    with pytest.raises(ValueError, match="> 0"):
        ProbSTETemperatureSchedule(0.0, 0.1, 10)


def test_tau_schedule_from_training_arguments():
    from prologue_hf.training.trainer_tokenizer import PrologueTokenizerTrainingArguments

    tokenizer = PrologueTokenizerModel(tiny_tokenizer_config())
    args = PrologueTokenizerTrainingArguments(output_dir="unused", report_to=[])
    assert temperature_schedule_from_args(args, tokenizer) is None
    args = PrologueTokenizerTrainingArguments(
        output_dir="unused", report_to=[], prologue_temperature_schedule="exponential",
        prologue_temperature_start=1.0, prologue_temperature_steps=10,
    )
    schedule = temperature_schedule_from_args(args, tokenizer)
    assert schedule(0) == 1.0 and schedule(10) == pytest.approx(tokenizer.config.prologue_temperature)
    with pytest.raises(ValueError, match="kind"):
        PrologueTokenizerTrainingArguments(output_dir="unused", report_to=[], prologue_temperature_schedule="steps")


def test_codebook_init_choice():
    torch.manual_seed(0)
    normal = PrologueTokenizerModel(tiny_tokenizer_config(codebook_init="normal"))
    simvq = PrologueTokenizerModel(tiny_tokenizer_config(codebook_init="simvq"))
    dim = simvq.config.codebook_dim
    assert normal.visual_quantizer.embedding.weight.std().item() == pytest.approx(1.0, rel=0.1)
    assert simvq.visual_quantizer.embedding.weight.std().item() == pytest.approx(dim**-0.5, rel=0.1)
    assert simvq.prologue_quantizer.embedding.weight.std().item() == pytest.approx(dim**-0.5, rel=0.15)
    with pytest.raises(ValueError, match="codebook_init"):
        tiny_tokenizer_config(codebook_init="uniform")
