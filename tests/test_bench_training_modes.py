"""benchmarks/bench_training.py measures stage 1 in the training mode its recipe uses (issue 19)."""

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_stage1_cell_follows_the_recipe_training_mode(load_example):
    bench = load_example("bench_training", folder="benchmarks")
    assert bench.stage1_training_mode("config", "tokenizer_B.yaml") == "official"  # the B recipe's mode
    assert bench.stage1_training_mode("config", None) == "routed"
    assert bench.stage1_training_mode("routed", "tokenizer_B.yaml") == "routed"


def test_official_mode_stage1_cell_splits_its_two_steps(load_example):
    bench = load_example("bench_training", folder="benchmarks")
    (result,) = bench.main(["--size", "tiny", "--trainers", "stage1", "--stage1-mode", "official", "--dtypes", "fp32",
                            "--steps", "2", "--warmup", "1", "--threads", "1"])  # fmt: skip
    assert result["training_mode"] == "official" and result["timed_steps"] == 2
    for step in result["steps"]:
        # encoder + decoder step, AR step and the optimizers' steps all seen, and with the rest they add up to the step
        assert step["forward"] > 0 and step["backward"] > 0 and step["optimizer"] > 0 and step["data"] >= 0
        assert sum(step[part] for part in bench.PARTS) == pytest.approx(step["wall"], abs=2e-4)
    assert "| stage1 (official) | tiny | 2 | fp32 | off |" in bench.markdown_table([result])
