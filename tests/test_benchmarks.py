"""The hand-run benchmark scripts still run (tiny sizes): they are how the figures in docs/benchmarks.md are made."""

import json
from pathlib import Path

import pytest
import torch


def test_bench_sampling_rows_and_kernel_floor(load_example):
    bench = load_example("bench_sampling", folder="benchmarks")
    rows = bench.main(
        ["--configs", "tiny", "--batch-sizes", "2", "--dtypes", "fp32", "--methods", "ours", "hf_loop", "--repeats", "1"]
    )
    assert [row["method"] for row in rows] == ["ours", "hf_loop"]
    for row in rows:
        assert row["rows"] == 4 and row["steps"] == 21
        assert row["seconds"] > 0 and row["bound_seconds"] > 0
        assert row["x_bound"] == pytest.approx(row["seconds"] / row["bound_seconds"])
        # kernels alone = packed matmuls of every step + the attention of the run
        matmuls = row["packed_matmul_only_ms_per_step"] * row["steps"] / 1e3
        assert row["kernels_only_seconds"] == pytest.approx(matmuls + row["attention_only_seconds"])
    assert "| tiny | fp32 | 2 (4) | `ours` |" in bench.markdown_table(rows)


def test_bench_sampling_attention_only_calls_every_step_and_layer(load_example, monkeypatch):
    bench = load_example("bench_sampling", folder="benchmarks")
    ar = bench.build_ar("tiny", torch.float32)
    lengths = []
    original = bench.F.scaled_dot_product_attention

    def counting(q, k, v, **kwargs):
        lengths.append(k.shape[2])
        return original(q, k, v, **kwargs)

    monkeypatch.setattr(bench.F, "scaled_dot_product_attention", counting)
    bench.attention_only_seconds(ar, rows=2, repeats=1)
    steps, layers = ar.config.vocabulary.num_generated_tokens, ar.config.num_hidden_layers
    per_run = [length for length in range(1, steps + 1) for _ in range(layers)]
    assert lengths == per_run * 2  # one warm-up run + one timed run


def test_bench_op_after_gemm_runs(load_example, capsys):
    bench = load_example("bench_op_after_gemm", folder="benchmarks")
    bench.main(["--rows", "2", "--layers", "2", "--repeats", "1", "--dtype", "fp32"])
    out = capsys.readouterr().out
    assert "| F.rms_norm |" in out and "| add |" in out


def test_bench_op_after_gemm_norms_are_the_same_norm(load_example):
    bench = load_example("bench_op_after_gemm", folder="benchmarks")
    x, weight = torch.randn(3, 1, bench.HIDDEN), torch.randn(bench.HIDDEN)
    ops = bench.small_ops(x, weight)
    reference = ops.pop("F.rms_norm")()
    torch.testing.assert_close(ops.pop("add")(), 2 * x)
    for name, op in ops.items():
        torch.testing.assert_close(op(), reference, msg=name)


def test_bench_sampling_against_mode_times_both_checkouts_in_turn(load_example, tmp_path):
    # the A/B mode against this same checkout: both sides run, alternating, in their own processes
    bench = load_example("bench_sampling", folder="benchmarks")
    src = str(Path(bench.__file__).resolve().parents[1] / "src")
    out = tmp_path / "ab.json"
    rows = bench.main(["--configs", "tiny", "--batch-sizes", "1", "--dtypes", "fp32", "--repeats", "1",
                       "--against", src, "--json", str(out)])
    (row,) = rows
    assert set(row["times"]) == {"this", "against", "this_cpu", "against_cpu"}
    assert all(len(t) == 1 and t[0] > 0 for t in row["times"].values())
    assert row["this_over_against_median"] == pytest.approx(row["this_median"] / row["against_median"])
    assert json.loads(out.read_text())[0]["batch"] == 1


def test_bench_training_splits_each_step_of_the_three_trainers(load_example, tmp_path):
    from prologue_hf.testing import tiny_ar_config

    bench = load_example("bench_training", folder="benchmarks")
    out = tmp_path / "training.json"
    results = bench.main(["--size", "tiny", "--dtypes", "fp32", "--steps", "2", "--warmup", "1", "--threads", "1",
                          "--json", str(out)])  # fmt: skip
    assert [r["trainer"] for r in results] == ["stage1", "stage2", "post"]
    for r in results:
        assert r["timed_steps"] == 2 and len(r["steps"]) == 2 and r["compile"] == "off"
        for step in r["steps"]:  # the parts and the overhead add up to the step's wall time
            assert all(step[part] >= 0 for part in ("data", "forward", "backward", "optimizer"))
            assert step["forward"] > 0 and step["backward"] > 0 and step["optimizer"] > 0
            assert sum(step[part] for part in bench.PARTS) == pytest.approx(step["wall"], abs=2e-4)
        rate = r["sequences_per_s"] if r["trainer"] == "stage2" else r["images_per_s"]
        assert rate == pytest.approx(r["batch_size"] / r["s_per_step_median"], rel=1e-2)
        assert r["s_per_step_min"] <= r["s_per_step_median"] and r["peak_rss_mib"] > r["peak_rss_growth_mib"] > 0
    sequence_length = tiny_ar_config().vocabulary.sequence_length
    assert json.loads(out.read_text())["results"][1]["sequence_length"] == sequence_length
    assert "| stage1 | tiny | 2 | fp32 | off |" in bench.markdown_table(results)


def test_check_device_training_and_compiled_sampling_parts_run_on_cpu(load_example):
    check = load_example("check_device", folder="benchmarks")
    report = check.main(["--device", "cpu", "--parts", "training", "compiled_sampling", "--train-size", "tiny",
                         "--compile-backend", "aot_eager", "--dtypes", "fp32"])  # fmt: skip
    runs = [(r["trainer"], r["compile"], r["activation_checkpointing"]) for r in report["training"]]
    assert runs == [("stage1", "off", False), ("stage1", "on", False), ("stage2", "off", False),
                    ("stage2", "on", False), ("post", "off", False), ("post", "on", False), ("stage2", "off", True)]
    for r in report["training"]:
        assert r["dtype"] == "bf16" and r["timed_steps"] == 2 and r["s_per_step_median"] > 0 and r["peak_rss_mib"] > 0
    sampled = report["compiled_sampling"]["fp32"]
    assert sampled["ids_equal"] == 1.0 and sampled["eager_s"] > 0 and sampled["compiled_s"] > 0
