"""The `make demo` path on a miniature config (same code, tiny budget), offline."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from prologue_hf.research.demo import DemoConfig, _official_ar_rope_axes, run_demo


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"training_mode": "joint"}, "training_mode"),
        ({"official_parametrization_init": "zero"}, "official_parametrization_init"),
        ({"stage1_lr_hold_fraction": 1.0}, "stage1_lr_hold_fraction"),
        ({"prologue_temperature_end": 0.0}, "prologue_temperature_end"),
        ({"stage1_learning_rate": 0.0}, "stage1_learning_rate"),
        ({"stage2_learning_rate": -1e-3}, "stage2_learning_rate"),
    ],
)
def test_demo_config_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DemoConfig(**kwargs)


def test_official_compact_ar_rope_layout():
    assert _official_ar_rope_axes(64) == [24, 20, 20]  # the official AR's layout at its head dim
    assert _official_ar_rope_axes(16) == [6, 4, 6]  # the demo's compact AR (width 64, 4 heads)
    assert DemoConfig().official_stage1 and not DemoConfig(num_prologue_tokens=0).official_stage1


def test_demo_end_to_end_miniature(tmp_path):
    config = DemoConfig(
        output_dir=str(tmp_path / "demo"),
        train_per_class=6,
        test_per_class=2,
        stage1_steps=4,
        stage1_batch_size=8,
        stage2_steps=4,
        stage2_batch_size=8,
        samples_per_class=2,
        fd_images=20,
        prologue_temperature=0.5,
    )
    report = run_demo(config)
    out = tmp_path / "demo"
    for name in ("samples.png", "reconstructions.png", "loss_curves.png", "report.md", "report.json"):
        assert (out / name).is_file(), name
    # 10 class rows + 1 fixed-prologue row of 2 samples, 32px cells with 2px gaps, scaled x3, class names on the left
    width, height = PIL.Image.open(out / "samples.png").size
    assert height == (11 * 34 - 2) * 3 and width > (2 * 34 - 2) * 3
    assert PIL.Image.open(out / "reconstructions.png").size[1] == (2 * 34 - 2) * 3
    saved = json.loads((out / "report.json").read_text())
    assert saved["config"]["stage1_steps"] == 4
    for value in (report["reconstruction_l1"], report["reconstruction_psnr_db"], report["fd_effnet_lite0"]["value"]):
        assert math.isfinite(value)
    assert 0 < report["visual_codebook"]["usage"] <= 1 and 0 < report["prologue_codebook"]["usage"] <= 1
    assert set(report["test_nll"]) == {"prologue_bits_per_token", "visual_bits_per_token"}
    assert "Fréchet distance on EfficientNet-Lite0" in (out / "report.md").read_text()
    # stage 1 ran in the official training mode (its checkpoint holds the unfolded parameterisation) and the report
    # shows the prologue collapse diagnostics (issue 15)
    assert (out / "stage1" / "official_parametrization.safetensors").is_file()
    diagnostics = report["prologue_diagnostics"]
    assert 0 < diagnostics["prologue_distinct_tuples"] <= 1 and diagnostics["prologue_label_mi_bits"] >= 0
    assert "prologue diagnostics (256 test images)" in (out / "report.md").read_text()
    assert PIL.Image.open(out / "loss_curves.png").size[0] > 1500  # three panels: stage 1, stage 2, diagnostics

    # the saved pipeline reloads in a fresh process with nothing but the package and gives the same images
    script = (
        "import sys, torch, numpy as np\n"
        "from prologue_hf import ProloguePipeline\n"
        "pipe = ProloguePipeline.from_pretrained(sys.argv[1])\n"
        "img = pipe([3, 5], generator=torch.Generator().manual_seed(7), output_type='np').images\n"
        "np.save(sys.argv[2], img)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", script, str(out / "pipeline"), str(tmp_path / "a.npy")], check=True, env=env)
    from prologue_hf import ProloguePipeline

    pipe = ProloguePipeline.from_pretrained(out / "pipeline")
    assert pipe.tokenizer.config.prologue_temperature == 0.5  # DemoConfig's tau reaches the trained tokenizer
    here = pipe([3, 5], generator=torch.Generator().manual_seed(7), output_type="np").images
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), here)

    # a second `make demo` into the same folder starts over (the demo owns its output folder; the trainers' guard
    # against mixing two runs must not stop it)
    again = run_demo(config)
    assert json.loads((out / "report.json").read_text())["config"] == saved["config"]
    assert math.isfinite(again["reconstruction_l1"])
