"""The CPU mini-replication path (baseline vs Prologue) on a miniature config, plus its aggregation helpers."""

import json
import math

import numpy as np
import PIL.Image
import pytest

from prologue_hf.research.replication import (
    METRICS,
    PROLOGUE_ONLY_METRICS,
    ReplicationConfig,
    aggregate,
    paired_comparison,
    results_table,
    run_replication,
    sampling_sweep,
)


def _fake_run(variant, seed, value):
    run = {key: value + i for i, key in enumerate(METRICS)}
    run.update(variant=variant, seed=seed, fd_by_sampling={"none": value, "visual_2": value / 2})
    return run


def test_aggregate_mean_and_sample_std_hand_computed():
    runs = [_fake_run("a", 0, 1.0), _fake_run("a", 1, 3.0), _fake_run("b", 0, 10.0)]
    summary = aggregate(runs)
    assert list(summary) == ["a", "b"]
    stats = summary["a"]["fd_no_cfg"]  # values 1+2 and 3+2
    assert stats["values"] == [3.0, 5.0] and stats["mean"] == 4.0
    assert stats["std"] == pytest.approx(math.sqrt(2.0))  # ddof=1
    assert summary["b"]["fd_no_cfg"]["std"] == 0.0  # one seed
    assert summary["a"]["fd_by_sampling"]["visual_2"]["mean"] == 1.0
    table = results_table(summary)
    assert "| metric | a | b |" in table
    assert "| FD-EffNetLite0 w/o CFG ↓ | 4.000 ± 1.414 | 12.000 ± 0.000 |" in table


def test_paired_comparison_hand_computed():
    runs = [
        {"variant": "base", "seed": 0, "fd_no_cfg": 100.0},
        {"variant": "base", "seed": 1, "fd_no_cfg": 80.0},
        {"variant": "base", "seed": 2, "fd_no_cfg": 60.0},  # no Prologue run at seed 2: not paired
        {"variant": "pro", "seed": 1, "fd_no_cfg": 90.0},
        {"variant": "pro", "seed": 0, "fd_no_cfg": 54.0},
    ]
    paired = paired_comparison(runs, "base", "pro")
    assert paired["seeds"] == [0, 1] and paired["baseline"] == [100.0, 80.0] and paired["variant"] == [54.0, 90.0]
    assert paired["wins"] == 1
    assert paired["mean_relative_change"] == pytest.approx(72.0 / 90.0 - 1.0)  # -20 %
    with pytest.raises(ValueError, match="no seed"):
        paired_comparison(runs, "base", "missing")


def test_sampling_sweep_guides_prologue_only_when_present():
    baseline = sampling_sweep(0, [1.5, 3.0], 0.8)
    prologue = sampling_sweep(4, [1.5, 3.0], 0.8)
    assert list(baseline) == list(prologue) == ["none", "visual_1.5", "visual_3"]
    assert baseline["none"].visual_guidance is None and baseline["none"].guidance is None
    assert baseline["visual_3"].prologue_guidance is None and baseline["visual_3"].visual_guidance.scale == 3.0
    assert prologue["visual_1.5"].prologue_guidance.scale == 0.8 and prologue["visual_1.5"].visual_guidance.scale == 1.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"variants": [{"name": "a", "num_prologue_tokens": 0}, {"name": "a", "num_prologue_tokens": 4}]}, "unique"),
        ({"variants": [{"name": "a"}]}, "num_prologue_tokens"),
        ({"visual_scales": [1.0]}, "visual_scales"),
        ({"seeds": []}, "seeds"),
    ],
)
def test_config_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReplicationConfig(**kwargs)


def test_replication_miniature_end_to_end(tmp_path):
    config = ReplicationConfig(
        output_dir=str(tmp_path / "runs"),
        seeds=[0],
        demo_overrides=dict(
            train_per_class=4,
            test_per_class=2,
            stage1_steps=2,
            stage1_batch_size=8,
            stage2_steps=2,
            stage2_batch_size=8,
            samples_per_class=1,
        ),
        fd_images_per_class=1,
        visual_scales=[2.0],
        probe_epochs=3,
    )
    results = run_replication(config, str(tmp_path / "results.json"), str(tmp_path / "plot.png"))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved) == {"config", "reference_images", "runs", "summary", "paired_fd_no_cfg", "table", "wall_seconds"}
    assert saved["reference_images"] == 20
    assert [run["variant"] for run in saved["runs"]] == ["baseline_2d", "prologue_k4"]
    for run in saved["runs"]:
        assert set(run["fd_by_sampling"]) == {"none", "visual_2"}
        for key in METRICS:
            if run["num_prologue_tokens"] or key not in PROLOGUE_ONLY_METRICS:
                assert math.isfinite(run[key]), (run["variant"], key)
            else:  # the 2D baseline has no prologue to diagnose
                assert run.get(key) is None, key
        assert 0.0 <= run["probe_top1"] <= 100.0 and run["best_visual_scale"] == 2.0
        assert run["fd_best_cfg"] == run["fd_by_sampling"]["visual_2"]
    baseline, prologue = saved["runs"]
    assert baseline["probe_feature"] == "visual x4" and prologue["probe_feature"] == "prologue x4"
    # the default: Prologue's stage 1 in the official training mode (the baseline has no compact AR to train)
    assert prologue["training_mode"] == "official" and baseline["training_mode"] == "routed"
    assert 0.0 <= prologue["prologue_distinct_tuples"] <= 1.0 and prologue["prologue_label_mi_bits"] >= 0.0
    paired = saved["paired_fd_no_cfg"]["prologue_k4"]
    assert paired["seeds"] == [0] and paired["baseline"] == [baseline["fd_no_cfg"]]
    assert paired["wins"] == int(prologue["fd_no_cfg"] < baseline["fd_no_cfg"])
    assert baseline["prologue_bits_per_token"] is None and prologue["prologue_bits_per_token"] > 0
    # total bits = 64 visual tokens (+ 4 prologue tokens) at their per-token NLL
    assert baseline["sequence_bits_per_image"] == pytest.approx(64 * baseline["visual_bits_per_token"])
    assert prologue["sequence_bits_per_image"] == pytest.approx(
        64 * prologue["visual_bits_per_token"] + 4 * prologue["prologue_bits_per_token"]
    )
    assert set(saved["summary"]) == {"baseline_2d", "prologue_k4"}
    assert "| visual NLL (bits/token) ↓ |" in results["table"]
    assert np.asarray(PIL.Image.open(tmp_path / "plot.png")).ndim == 3
    # a second call resumes from the cached per-run metrics (no retraining) and gives the same numbers
    again = run_replication(config)
    assert again["runs"] == saved["runs"]
