"""ProloguePipeline checks that its tokenizer is the one whose ids the AR was trained on (issue 16 item 4): on
construction, register_modules and from_pretrained, with the explicit opt-out verify_tokenizer_identity=False."""

import json

import pytest
import torch

from prologue_hf.identity import tokenizer_identity
from prologue_hf.pipelines import ProloguePipeline
from prologue_hf.testing import tiny_ar, tiny_tokenizer
from prologue_hf.testing_post import tiny_post_model


def _ar_for(tokenizer, seed=0):
    """A tiny AR whose config records ``tokenizer`` as the source of its ids (as stage-2 training does)."""
    return tiny_ar(tokenizer.config, seed=seed, tokenizer_identity=tokenizer_identity(tokenizer))


def test_a_tokenizer_other_than_the_recorded_one_is_refused_naming_both():
    trained_on, other = tiny_tokenizer(seed=0), tiny_tokenizer(seed=1)  # same vocabulary, other weights
    ar = _ar_for(trained_on)
    ProloguePipeline(tokenizer=trained_on, ar=ar)
    expected = rf"trained on the ids of tokenizer {tokenizer_identity(trained_on)}, the given tokenizer is " + (
        rf"{tokenizer_identity(other)}.*verify_tokenizer_identity=False"
    )
    with pytest.raises(ValueError, match=expected):
        ProloguePipeline(tokenizer=other, ar=ar)
    pipe = ProloguePipeline(tokenizer=other, ar=ar, verify_tokenizer_identity=False)  # the explicit opt-out
    assert pipe.tokenizer is other
    # an AR without a recorded identity (a converted official checkpoint may have none): nothing to check
    ProloguePipeline(tokenizer=other, ar=tiny_ar(other.config))


def test_register_modules_checks_the_new_pair_before_swapping():
    trained_on = tiny_tokenizer(seed=0)
    pipe = ProloguePipeline(tokenizer=trained_on, ar=_ar_for(trained_on))
    with pytest.raises(ValueError, match="tokenizer identity mismatch"):
        pipe.register_modules(tokenizer=tiny_tokenizer(seed=1))
    assert pipe.tokenizer is trained_on  # a refused swap leaves the pipeline as it was
    other = tiny_tokenizer(seed=1)
    pipe.register_modules(tokenizer=other, ar=_ar_for(other))  # both at once: checked as a pair
    assert pipe.tokenizer is other


def test_from_pretrained_checks_and_the_opt_out_is_not_saved(tmp_path):
    trained_on, other = tiny_tokenizer(seed=0), tiny_tokenizer(seed=1)
    ProloguePipeline(tokenizer=other, ar=_ar_for(trained_on), verify_tokenizer_identity=False).save_pretrained(tmp_path)
    assert "verify_tokenizer_identity" not in json.loads((tmp_path / "model_index.json").read_text())
    with pytest.raises(ValueError, match="tokenizer identity mismatch"):
        ProloguePipeline.from_pretrained(tmp_path)
    loaded = ProloguePipeline.from_pretrained(tmp_path, verify_tokenizer_identity=False)
    assert tokenizer_identity(loaded.tokenizer) == tokenizer_identity(other)
    # the matching pair saves and reloads through the check
    ProloguePipeline(tokenizer=trained_on, ar=_ar_for(trained_on)).save_pretrained(tmp_path / "good")
    ProloguePipeline.from_pretrained(tmp_path / "good")


def test_a_post_tokenizer_is_checked_the_same_way():
    post, other = tiny_post_model("janus_vqvae", seed=0), tiny_post_model("janus_vqvae", seed=1)
    ar = tiny_ar(post.config, tokenizer_identity=tokenizer_identity(post))
    ProloguePipeline(tokenizer=post, ar=ar)
    with pytest.raises(ValueError, match="tokenizer identity mismatch"):
        ProloguePipeline(tokenizer=other, ar=ar)


def test_a_tokenizer_held_in_another_dtype_cannot_be_verified_and_says_so(log_records):
    trained_on = tiny_tokenizer(seed=0)
    ar = _ar_for(trained_on)
    with log_records("prologue_hf.pipelines.pipeline_prologue") as records:
        ProloguePipeline(tokenizer=tiny_tokenizer(seed=0).to(torch.bfloat16), ar=ar)  # the same weights, cast
    assert len(records) == 1 and "not verifiable for a tokenizer held in ['torch.bfloat16']" in records[0].getMessage()


def test_the_identity_cost_benchmark_runs(load_example):
    bench = load_example("bench_identity", folder="benchmarks")
    (row,) = bench.main(["--presets", "tiny", "--repeats", "2"])
    tiny = tiny_tokenizer(seed=0)
    assert row["elements"] == sum(t.numel() for t in tiny.state_dict().values())
    assert row["mib"] == row["elements"] * 4 / 2**20 and len(row["runs"]) == 2 and row["seconds"] > 0
