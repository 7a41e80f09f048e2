"""The sampler: guidance math against hand computations, KV cache vs full recompute, masks, filters, presets,
fixed prologues, reproducibility, HF ``generate()`` compatibility and the official fixture's greedy runs."""

from __future__ import annotations

import dataclasses
import functools
import math
from unittest import mock

import pytest
import torch
from transformers import LogitsProcessorList

from prologue_hf.pipelines import (
    SAMPLING_PRESETS,
    GuidanceSchedule,
    PreallocatedCache,
    PrologueSegmentLogitsProcessor,
    SamplingParams,
    draw_categorical,
    generate_ids,
    top_k_filter,
    top_p_filter,
)
from prologue_hf.testing import seeded_generator as _seeded
from prologue_hf.testing import tiny_ar, tiny_tokenizer_config
from prologue_hf.vocabulary import PrologueVocabulary

K, T = 4, 21  # tiny vocabulary: 4 prologue tokens, EOS, 16 visual tokens
VOCAB = PrologueVocabulary(64, 16, K, 16, 10)


@functools.cache
def _ar(num_prologue_tokens: int = 4):
    return tiny_ar(tiny_tokenizer_config(num_prologue_tokens=num_prologue_tokens), seed=0)


def _assert_valid_segments(ar, ids: torch.Tensor) -> None:
    allowed = ar.config.vocabulary.allowed_tokens()  # [T, vocab]
    assert bool(allowed.gather(1, ids.T).all()), "a generated id lies outside its segment"


# ------------------------------------------------------------------------------------------ guidance weights by hand
def test_global_schedules_match_hand_computation():
    # official non-segmented mode: t = s / T over all T = K + 1 + N steps, ramps start at 1
    linear = SamplingParams(guidance=GuidanceSchedule(3.0, "linear")).guidance_weights(VOCAB)
    assert linear == pytest.approx([(1 - s / T) + 3.0 * s / T for s in range(T)])
    assert linear[7] == pytest.approx(1 + 2 * 7 / 21)  # 1.6667
    cosine = SamplingParams(guidance=GuidanceSchedule(4.0, "cosine", power=1.75)).guidance_weights(VOCAB)
    assert cosine == pytest.approx([1 + 3.0 * (1 - math.cos(math.pi * (s / T) ** 1.75)) / 2 for s in range(T)])
    assert cosine[0] == 1.0 and cosine[20] == pytest.approx(1 + 1.5 * (1 - math.cos(math.pi * (20 / 21) ** 1.75)))
    constant = SamplingParams(guidance=GuidanceSchedule(0.5)).guidance_weights(VOCAB)
    assert constant == [0.5] * T  # scales below 1 are real guidance


def test_segmented_schedules_match_hand_computation():
    params = SamplingParams(
        prologue_guidance=GuidanceSchedule(2.5, "linear"),  # start defaults to 0.0 (official semantic_cfg_start)
        visual_guidance=GuidanceSchedule(3.0, "linear"),  # start defaults to 1.0 (official visual_cfg_start)
    )
    weights = params.guidance_weights(VOCAB)
    assert weights[:K] == pytest.approx([0.0, 0.625, 1.25, 1.875])  # 2.5 * s / 4
    assert weights[K] == 1.0  # the EOS step is visual t = 0
    assert weights[K + 1 :] == pytest.approx([1 + 2.0 * (s - K) / (T - K) for s in range(K + 1, T)])

    cosine = SamplingParams(
        prologue_guidance=GuidanceSchedule(0.7),
        visual_guidance=GuidanceSchedule(3.75, "cosine", power=0.2, start=1.5),
    ).guidance_weights(VOCAB)
    assert cosine[:K] == [0.7] * K
    t = [(s - K) / (T - K) for s in range(K, T)]
    assert cosine[K:] == pytest.approx([1.5 + 2.25 * (1 - math.cos(math.pi * x**0.2)) / 2 for x in t])


def test_non_positive_scale_switches_guidance_off():
    # official: CFG only when the (segment) scale is > 0; otherwise the conditional logits are used as they are
    assert SamplingParams(guidance=GuidanceSchedule(0.0)).guidance_weights(VOCAB) == [None] * T
    weights = SamplingParams(prologue_guidance=GuidanceSchedule(-1.0), visual_guidance=GuidanceSchedule(2.0))
    assert weights.guidance_weights(VOCAB) == [None] * K + [2.0] * (T - K)
    assert SamplingParams(visual_guidance=GuidanceSchedule(2.0)).guidance_weights(VOCAB)[:K] == [None] * K
    # K = 0 (the 2D baseline): every step is visual, t = s / N
    assert SamplingParams(visual_guidance=GuidanceSchedule(3.0, "linear")).guidance_weights(PrologueVocabulary(64, 16, 0, 16, 10)) == pytest.approx(
        [1 + 2.0 * s / 16 for s in range(16)]
    )


def _hand_weight(case: str, s: int) -> float | None:
    """The guidance weight of step s written out from SPEC.md §3 for each case of the end-to-end test."""
    if case == "global-constant":
        return 2.0
    if case == "global-linear":
        return (1 - s / T) + 3.0 * s / T
    if case == "global-cosine":
        return 1 + 3.0 * (1 - math.cos(math.pi * (s / T) ** 1.75)) / 2
    if case == "segmented":
        if s < K:
            return 0.0 + 2.5 * (s / K)
        return 1.0 + 2.75 * (1 - math.cos(math.pi * ((s - K) / (T - K)) ** 0.5)) / 2
    if case == "prologue-only":
        return 0.7 if s < K else None
    raise AssertionError(case)


CASES = {
    "global-constant": SamplingParams(guidance=GuidanceSchedule(2.0)),
    "global-linear": SamplingParams(guidance=GuidanceSchedule(3.0, "linear"), temperature=0.8),
    "global-cosine": SamplingParams(guidance=GuidanceSchedule(4.0, "cosine", 1.75)),
    "segmented": SamplingParams(
        prologue_guidance=GuidanceSchedule(2.5, "linear"),
        visual_guidance=GuidanceSchedule(3.75, "cosine", 0.5),
        temperature=0.9,
        prologue_temperature=0.6,
    ),
    "prologue-only": SamplingParams(prologue_guidance=GuidanceSchedule(0.7), top_k=5, top_p=0.9),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_step_logits_equal_cfg_mix_of_teacher_forced_logits(case):
    """Each step's final logits = (w cond + (1 - w) uncond) / temperature + mask, where cond / uncond come from
    one teacher-forced forward over the sampled sequence with the class / null token in front."""
    ar, params = _ar(), CASES[case]
    labels = torch.tensor([3, 7, 10])  # 10 = the null class: unconditional rows work too
    out = generate_ids(ar, labels, params, generator=_seeded(1), return_step_logits=True)
    vocab = ar.config.vocabulary
    cond_seq = torch.cat([vocab.class_token_ids(labels)[:, None], out.ids], 1)
    uncond_seq = torch.cat([torch.full((3, 1), vocab.null_class_id), out.ids], 1)
    with torch.no_grad():
        cond, uncond = ar(cond_seq[:, :-1]).logits, ar(uncond_seq[:, :-1]).logits
    mask = vocab.logit_mask()
    for s in range(T):
        w = _hand_weight(case, s)
        mixed = cond[:, s] if w is None else w * cond[:, s] + (1 - w) * uncond[:, s]
        temperature = params.prologue_temperature if s < K and params.prologue_temperature else params.temperature
        expected = mixed / temperature + mask[s]
        finite = torch.isfinite(expected)
        assert torch.equal(torch.isfinite(out.step_logits[:, s]), finite)
        torch.testing.assert_close(out.step_logits[:, s][finite], expected[finite], rtol=0, atol=2e-5)
    _assert_valid_segments(ar, out.ids)


# ------------------------------------------------------------------------------------------ cache, batch, determinism
@pytest.mark.parametrize("preset", ["prologue-B-B", "prologue-B-B-nocfg", "1d-B-B"])
def test_kv_cache_gives_the_ids_and_logits_of_full_recompute(preset):
    ar, labels = _ar(), torch.tensor([0, 5, 9])
    params = SamplingParams.from_preset(preset, top_k=20)
    cached = generate_ids(ar, labels, params, generator=_seeded(3), return_step_logits=True)
    full = generate_ids(ar, labels, params, generator=_seeded(3), return_step_logits=True, use_cache=False)
    assert torch.equal(cached.ids, full.ids)
    assert torch.equal(torch.isfinite(cached.step_logits), torch.isfinite(full.step_logits))
    finite = torch.isfinite(full.step_logits)
    torch.testing.assert_close(cached.step_logits[finite], full.step_logits[finite], rtol=0, atol=1e-5)


def test_kv_cache_matches_full_recompute_with_a_fixed_prologue():
    ar, labels = _ar(), torch.tensor([1, 2])
    prologue = torch.tensor([[0, 15, 3, 3], [7, 7, 1, 12]])
    kwargs = dict(prologue_ids=prologue, return_step_logits=True)
    cached = generate_ids(ar, labels, "prologue-B-B", generator=_seeded(5), **kwargs)
    full = generate_ids(ar, labels, "prologue-B-B", generator=_seeded(5), use_cache=False, **kwargs)
    assert torch.equal(cached.ids, full.ids)
    finite = torch.isfinite(full.step_logits)
    torch.testing.assert_close(cached.step_logits[finite], full.step_logits[finite], rtol=0, atol=1e-5)


def _batch_rows(forward_kwargs: dict) -> int:
    """Rows of one AR forward call, whether the sampler feeds ids or embeddings."""
    inputs = forward_kwargs.get("inputs_embeds")
    return (inputs if inputs is not None else forward_kwargs["input_ids"]).shape[0]


def _rows_per_forward(ar, **kwargs) -> list[int]:
    rows = []
    handle = ar.model.register_forward_pre_hook(lambda m, a, kw: rows.append(_batch_rows(kw)), with_kwargs=True)
    try:
        generate_ids(ar, torch.tensor([1, 2]), generator=_seeded(0), **kwargs)
    finally:
        handle.remove()
    return rows


def test_batch_is_doubled_only_while_a_guidance_weight_differs_from_one():
    ar = _ar()
    # one forward per step (prefill of the class token, then T - 1 decode steps)
    assert _rows_per_forward(ar, sampling=SamplingParams()) == [2] * T
    assert _rows_per_forward(ar, sampling="prologue-B-B-nocfg") == [2] * T
    assert _rows_per_forward(ar, sampling=SamplingParams(guidance=GuidanceSchedule(1.0))) == [2] * T  # w = 1
    assert _rows_per_forward(ar, sampling="prologue-B-B") == [4] * T  # visual guidance until the last step
    # prologue-only guidance: steps 0..K-1 need the null rows, from the EOS step on they are dropped
    rows = _rows_per_forward(ar, sampling=SamplingParams(prologue_guidance=GuidanceSchedule(0.7)))
    assert rows == [4] * K + [2] * (T - K)  # forward s gives the logits of step s
    # a fixed prologue is one prefill of class + K prologue + EOS, then N - 1 visual decode steps
    rows = _rows_per_forward(ar, sampling="prologue-B-B", prologue_ids=torch.zeros(2, K, dtype=torch.long))
    assert rows == [4] * (T - K - 1)  # N forwards: the prefill gives the logits of steps 0..K+1


def test_dropping_the_null_half_does_not_change_the_conditional_rows():
    # Guidance only on the prologue: after step K the batch is halved. The ids must equal a run that keeps the
    # doubled batch to the end (visual scale 1.0 exactly, mixed as w = 1, i.e. the conditional logits).
    ar, labels = _ar(), torch.tensor([4, 6])
    halved = SamplingParams(prologue_guidance=GuidanceSchedule(0.7), top_k=1)
    kept = SamplingParams(prologue_guidance=GuidanceSchedule(0.7), visual_guidance=GuidanceSchedule(1.0), top_k=1)
    a = generate_ids(ar, labels, halved, return_step_logits=True)
    b = generate_ids(ar, labels, kept, return_step_logits=True)
    assert torch.equal(a.ids, b.ids)
    finite = torch.isfinite(a.step_logits)
    torch.testing.assert_close(a.step_logits[finite], b.step_logits[finite], rtol=0, atol=1e-5)


def test_seeded_generator_reproduces_and_seeds_differ():
    ar, labels = _ar(), torch.tensor([2, 2, 2, 2])
    a = generate_ids(ar, labels, "prologue-B-B", generator=_seeded(11))
    b = generate_ids(ar, labels, "prologue-B-B", generator=_seeded(11))
    c = generate_ids(ar, labels, "prologue-B-B", generator=_seeded(12))
    assert torch.equal(a.ids, b.ids)
    assert not torch.equal(a.ids, c.ids)
    assert len({tuple(row.tolist()) for row in a.ids}) > 1  # rows of one call are different samples


def test_outputs_split_into_raw_prologue_and_visual_ids():
    ar = _ar()
    out = generate_ids(ar, torch.tensor([0, 1]), generator=_seeded(0))
    vocab = ar.config.vocabulary
    assert out.ids.shape == (2, T) and out.ids.dtype == torch.long
    assert torch.equal(out.prologue_ids + vocab.prologue_offset, out.ids[:, :K])
    assert bool((out.ids[:, K] == vocab.eos_token_id).all())
    assert torch.equal(out.visual_ids, out.ids[:, K + 1 :])
    assert int(out.prologue_ids.max()) < 16 and int(out.visual_ids.max()) < 64
    assert out.step_logits is None


def test_fixed_prologue_is_kept_and_visual_tokens_are_resampled():
    ar = _ar()
    prologue = torch.tensor([[3, 1, 4, 1]]).expand(4, K)
    out = generate_ids(ar, torch.tensor([5, 5, 5, 5]), "prologue-B-B", prologue_ids=prologue, generator=_seeded(2))
    assert torch.equal(out.prologue_ids, prologue)
    assert bool((out.ids[:, K] == ar.config.vocabulary.eos_token_id).all())
    assert len({tuple(row.tolist()) for row in out.visual_ids}) > 1
    _assert_valid_segments(ar, out.ids)


def test_callback_sees_every_step_in_order():
    ar, seen = _ar(), []
    out = generate_ids(ar, torch.tensor([1, 2]), callback=lambda s, ids: seen.append((s, ids.clone())))
    assert [s for s, _ in seen] == list(range(T))
    assert torch.equal(torch.stack([ids for _, ids in seen], 1), out.ids)


def test_k0_vocabulary_and_bfloat16_weights():
    ar = _ar(0)
    out = generate_ids(ar, torch.tensor([1, 2]), "2d-B-B", generator=_seeded(0))
    assert out.prologue_ids is None and out.visual_ids.shape == (2, 16)
    _assert_valid_segments(ar, out.ids)
    bf16 = tiny_ar(seed=0).to(torch.bfloat16)
    out = generate_ids(bf16, torch.tensor([1, 2]), "prologue-B-B", generator=_seeded(0), return_step_logits=True)
    assert out.step_logits.dtype == torch.float32
    assert not torch.isnan(out.step_logits).any()
    _assert_valid_segments(bf16, out.ids)


# ------------------------------------------------------------------------------------------ filters and masks
def test_top_k_filter_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0, 3.0], [0.0, float("-inf"), 5.0, 4.0, 1.0]])
    inf = float("-inf")
    expected = torch.tensor([[inf, 3.0, 2.0, inf, 3.0], [inf, inf, 5.0, 4.0, 1.0]])
    assert torch.equal(top_k_filter(logits, 2), torch.tensor([[inf, 3.0, inf, inf, 3.0], [inf, inf, 5.0, 4.0, inf]]))
    assert torch.equal(top_k_filter(logits, 3), expected)
    assert top_k_filter(logits, 0) is logits


def test_top_p_filter_by_hand():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]])
    logits = probs.log()  # the last entry is -inf (masked)
    inf = float("-inf")
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))  # noqa: E731
    assert kept(0.5).tolist() == [[True, False, False, False, False]]  # 0.5 already reaches 0.5
    assert kept(0.6).tolist() == [[True, True, False, False, False]]
    assert kept(0.9).tolist() == [[True, True, True, False, False]]
    assert kept(0.01).tolist() == [[True, False, False, False, False]]  # the top token is always kept
    assert top_p_filter(logits, 1.0) is logits
    assert top_p_filter(torch.tensor([[inf, 2.0, inf]]), 0.3).tolist() == [[inf, 2.0, inf]]


def test_masked_segments_with_small_top_p_and_large_top_k_never_give_nan():
    # top_k larger than the prologue segment (16 ids) and a tiny nucleus: the mask leaves few finite logits
    ar = _ar()
    params = SamplingParams(guidance=GuidanceSchedule(3.0), top_k=50, top_p=1e-3, prologue_top_k=40)
    out = generate_ids(ar, torch.tensor([1, 2, 3]), params, generator=_seeded(0), return_step_logits=True)
    assert not torch.isnan(out.step_logits).any()
    _assert_valid_segments(ar, out.ids)
    # the top token of a segment has probability >= 1 / 64 > top_p: the nucleus is just that token (greedy)
    assert torch.equal(out.ids, out.step_logits.argmax(-1))


def test_greedy_is_top_k_one():
    ar = _ar()
    out = generate_ids(ar, torch.tensor([1, 8]), SamplingParams(top_k=1), generator=_seeded(0), return_step_logits=True)
    assert torch.equal(out.ids, out.step_logits.argmax(-1))


# ------------------------------------------------------------------------------------------ parameters and errors
def test_every_table_a5_row_is_a_preset():
    prologue_rows = [
        "B-B", "post", "onestage", "B-L", "B-XL", "L-B-convnext-s-4k", "L-L", "L-XL", "L-B-vgg16-4k",
        "L-B-convnext-s-16k", "codebook-256", "codebook-4096", "K4", "K64", "probste-tau0.01", "probste-tau1.0",
        "dropout-0.0", "dropout-1.0",
    ]
    names = {f"prologue-{r}" for r in prologue_rows} | {"1d-B-B", "2d-B-B", "2d-L-B"}
    assert set(SAMPLING_PRESETS) == names | {f"{n}-nocfg" for n in names}
    lxl = SamplingParams.from_preset("prologue-L-XL")
    assert lxl.prologue_guidance == GuidanceSchedule(0.7, "constant")
    assert lxl.visual_guidance == GuidanceSchedule(2.25, "cosine", 0.225, 1.0)
    assert (lxl.temperature, lxl.prologue_temperature) == (1.0, None)
    nocfg = SamplingParams.from_preset("prologue-l-xl-NOCFG")  # case-insensitive
    assert nocfg.guidance_weights(VOCAB) == [None] * T
    assert (nocfg.prologue_temperature, nocfg.temperature) == (1.0, 0.9)
    assert SamplingParams.from_preset("2d-B-B").guidance == GuidanceSchedule(10.0, "cosine", 1.5)
    assert SamplingParams.from_preset("prologue-B-B", top_k=7).top_k == 7
    with pytest.raises(ValueError, match="unknown sampling preset 'prologue-X'"):
        SamplingParams.from_preset("prologue-X")


def test_from_official_fallbacks():
    seg = SamplingParams.from_official(
        cfg=2.0, semantic_cfg_scale=0.7, semantic_cfg_schedule="constant",
        visual_cfg_power=0.2, visual_cfg_scale=3.75, visual_cfg_schedule="cosine", topK=1, topP=0,
    )
    assert seg.prologue_guidance == GuidanceSchedule(0.7, "constant", 1.0, 0.0)
    assert seg.visual_guidance == GuidanceSchedule(3.75, "cosine", 0.2, 1.0)
    assert (seg.top_k, seg.top_p) == (1, 1.0)
    # a segment with no schedule of its own falls back to cfg / cfg_power / constant
    fallback = SamplingParams.from_official(cfg=2.0, cfg_power=1.5, visual_cfg_schedule="linear", visual_cfg_scale=3.0)
    assert fallback.prologue_guidance == GuidanceSchedule(2.0, "constant", 1.5, 0.0)
    glob = SamplingParams.from_official(cfg=4.0, cfg_schedule="cosine", cfg_power=1.75, topP=0.9)
    assert glob.guidance == GuidanceSchedule(4.0, "cosine", 1.75, 1.0) and glob.top_p == 0.9


def test_to_dict_round_trip():
    params = SamplingParams.from_preset("prologue-B-B", top_p=0.95, prologue_temperature=0.8)
    assert SamplingParams.from_dict(params.to_dict()) == params
    with pytest.raises(ValueError, match="unknown SamplingParams fields"):
        SamplingParams.from_dict({"cfg": 2.0})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(temperature=-1.0), "temperature must be a finite number > 0"),
        (dict(temperature=0.0), "temperature must be a finite number > 0"),
        (dict(prologue_temperature=-0.5), "prologue_temperature must be"),
        (dict(top_k=-1), "top_k must be an integer >= 0"),
        (dict(top_p=0.0), r"top_p must lie in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must lie in \(0, 1\]"),
        (dict(guidance=GuidanceSchedule(2.0), visual_guidance=GuidanceSchedule(2.0)), "either `guidance`"),
    ],
)
def test_bad_sampling_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_bad_schedules():
    with pytest.raises(ValueError, match="schedule must be one of"):
        GuidanceSchedule(2.0, "exponential")
    with pytest.raises(ValueError, match="power must be > 0"):
        GuidanceSchedule(2.0, "cosine", power=0.0)
    with pytest.raises(ValueError, match="scale must be finite"):
        GuidanceSchedule(float("nan"))
    with pytest.raises(ValueError):
        dataclasses.replace(SamplingParams(), temperature=-2.0)


def test_bad_generate_inputs():
    ar = _ar()
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 10\)"):
        generate_ids(ar, torch.tensor([11]))
    with pytest.raises(ValueError, match="class_labels must be 1-D"):
        generate_ids(ar, torch.tensor([[1]]))
    with pytest.raises(ValueError, match=r"prologue_ids must have shape \[B, 4\]"):
        generate_ids(ar, torch.tensor([1]), prologue_ids=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"prologue_ids must lie in \[0, 16\)"):
        generate_ids(ar, torch.tensor([1]), prologue_ids=torch.full((1, 4), 16))
    with pytest.raises(ValueError, match="prologue_ids has 2 rows"):
        generate_ids(ar, torch.tensor([1]), prologue_ids=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_prologue_tokens=0"):
        generate_ids(_ar(0), torch.tensor([1]), prologue_ids=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="sampling must be"):
        generate_ids(ar, torch.tensor([1]), sampling=2.0)


def test_preallocated_cache_refuses_overflow_and_keeps_rows_as_views():
    cache = PreallocatedCache(num_layers=1, max_length=3)
    k = torch.arange(2 * 1 * 2 * 4, dtype=torch.float).view(2, 1, 2, 4)
    keys, values = cache.update(k, -k, 0)
    assert torch.equal(keys, k) and torch.equal(values, -k) and cache.get_seq_length() == 2
    storage = cache.layers[0]._keys.data_ptr()
    cache.batch_select_indices(slice(0, 1))  # what the sampler does to drop the unconditional half
    assert cache.layers[0]._keys.data_ptr() == storage  # a view: nothing copied
    assert cache.get_mask_sizes(query_length=1, layer_idx=0) == (3, 0)  # the filled length, no padding
    keys, _ = cache.update(k[:1, :, :1] + 100, k[:1, :, :1], 0)
    assert keys.shape == (1, 1, 3, 4) and torch.equal(keys[0, :, :2], k[0]) and torch.equal(keys[0, :, 2], k[0, :, 0] + 100)
    with pytest.raises(ValueError, match="KV cache holds 3 positions"):
        cache.update(k[:1, :, :1], k[:1, :, :1], 0)


# ------------------------------------------------------------------------------------------ HF generate()
def test_hf_generate_with_the_segment_processor_equals_greedy_sampler():
    ar, labels = _ar(), torch.tensor([3, 6])
    vocab = ar.config.vocabulary
    processor = LogitsProcessorList([PrologueSegmentLogitsProcessor(vocab)])
    prompt = vocab.class_token_ids(labels)[:, None]
    greedy = ar.generate(input_ids=prompt, do_sample=False, max_new_tokens=T, logits_processor=processor)
    ours = generate_ids(ar, labels, SamplingParams(top_k=1))
    assert torch.equal(greedy[:, 1:], ours.ids)
    torch.manual_seed(0)
    for top_k in (0, 50):  # generate's warpers (default top_k=50) run after the mask: segments stay non-empty
        sampled = ar.generate(input_ids=prompt, do_sample=True, top_k=top_k, max_new_tokens=T, logits_processor=processor)
        _assert_valid_segments(ar, sampled[:, 1:])
    with pytest.raises(ValueError, match="outside the 21 positions"):
        PrologueSegmentLogitsProcessor(vocab)(torch.zeros(1, 23, dtype=torch.long), torch.zeros(1, vocab.vocab_size))


# ------------------------------------------------------------------------------------------ official fixture
def test_official_greedy_runs_with_and_without_cache(official_fixture_dir):
    """The fixture's six greedy runs (official ARModel.sampling, topK=1) through a converted checkpoint."""
    conversion = pytest.importorskip("prologue_hf.conversion")
    from safetensors.torch import load_file

    config = conversion.OfficialConfig.from_yaml(official_fixture_dir / "config.yaml")
    ar = conversion.convert_official_ar(official_fixture_dir / "ar", config)
    inputs = load_file(official_fixture_dir / "inputs.safetensors")
    ref = load_file(official_fixture_dir / "sampling_outputs.safetensors")
    runs = {
        "nocfg": dict(cfg=0.0),
        "cfg_const2": dict(cfg=2.0),
        "cfg_linear3": dict(cfg=3.0, cfg_schedule="linear"),
        "cfg_cosine4": dict(cfg=4.0, cfg_schedule="cosine", cfg_power=1.75),
        "seg_linear": dict(semantic_cfg_scale=2.5, semantic_cfg_schedule="linear", visual_cfg_scale=3.0,
                           visual_cfg_schedule="linear"),
        "seg_sc": dict(semantic_cfg_scale=0.7, semantic_cfg_schedule="constant", visual_cfg_power=0.2,
                       visual_cfg_scale=3.75, visual_cfg_schedule="cosine"),
    }
    official_vocab = 81  # V + P + EOS; our class tokens follow
    for run, kwargs in runs.items():
        params = SamplingParams.from_official(topK=1, **kwargs)
        final = ref[f"sample_{run}_final_logits"]
        finite = torch.isfinite(final)
        # full recompute on the two runs with the smallest official margins / segmented mode
        for use_cache in (True, False) if run in ("cfg_cosine4", "seg_sc") else (True,):
            out = generate_ids(ar, inputs["class_ids"], params, use_cache=use_cache, return_step_logits=True)
            assert torch.equal(out.ids, ref[f"sample_{run}_ids"]), (run, use_cache)
            ours = out.step_logits[..., :official_vocab]
            assert torch.equal(torch.isfinite(ours), finite)
            assert torch.isinf(out.step_logits[..., official_vocab:]).all()  # class tokens are never sampled
            torch.testing.assert_close(ours[finite], final[finite], rtol=0, atol=1e-4)


def test_draw_categorical_matches_the_distribution_and_never_draws_zero_mass():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    generator = _seeded(0)
    draws = torch.stack([draw_categorical(probs, generator) for _ in range(20000)])  # [n, 2]
    counts = torch.bincount(draws[:, 0], minlength=6).double() / draws.shape[0]
    assert counts[[0, 2, 5]].sum() == 0 and bool((draws[:, 1] == 0).all())
    torch.testing.assert_close(counts[[1, 3, 4]], torch.tensor([0.5, 0.3, 0.2], dtype=torch.double), atol=0.015, rtol=0)
    # u = 0 (the smallest uniform) picks the first id with mass, never a leading zero-mass id
    with mock.patch.object(torch, "rand", lambda *a, **k: torch.zeros(2, 1, dtype=torch.float64)):
        assert draw_categorical(probs).tolist() == [1, 0]
    with mock.patch.object(torch, "rand", lambda *a, **k: torch.full((2, 1), 1 - 2**-53, dtype=torch.float64)):
        assert draw_categorical(probs).tolist() == [4, 0]
    assert torch.equal(draw_categorical(probs, _seeded(5)), draw_categorical(probs, _seeded(5)))


def test_eager_attention_cache_matches_sdpa_and_full_recompute():
    # the eager path builds explicit masks from the cache's get_mask_sizes (sdpa skips them for one-token steps)
    ar = tiny_ar(seed=0)
    kwargs = dict(sampling="prologue-B-B", return_step_logits=True)
    sdpa = generate_ids(ar, torch.tensor([1, 2]), generator=_seeded(0), **kwargs)
    ar.set_attn_implementation("eager")
    eager = generate_ids(ar, torch.tensor([1, 2]), generator=_seeded(0), **kwargs)
    full = generate_ids(ar, torch.tensor([1, 2]), generator=_seeded(0), use_cache=False, **kwargs)
    finite = torch.isfinite(sdpa.step_logits)
    for other in (eager, full):
        assert torch.equal(other.ids, sdpa.ids)
        torch.testing.assert_close(other.step_logits[finite], sdpa.step_logits[finite], rtol=0, atol=1e-5)
