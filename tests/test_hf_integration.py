"""At home in diffusers / transformers / accelerate (issue 17 items 1-6): the diffusers-style pipeline call, offload
through accelerate's hooks, DiffusionPipeline and Auto* loading in fresh processes that never import prologue_hf
first, the model card and the Hub upload (mocked), transformers' generate() with classifier-free guidance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from unittest import mock

import numpy as np
import PIL.Image
import pytest
import torch

from prologue_hf.pipelines import (
    GuidanceSchedule,
    PrologueSegmentLogitsProcessor,
    SamplingParams,
    StepPlan,
    generate_ids,
    pipeline_prologue,
    prologue_model_card,
)
from prologue_hf.pipelines.pipeline_prologue import describe_sampling
from prologue_hf.testing import seeded_generator as _seeded
from prologue_hf.testing import tiny_ar, tiny_pipeline

K, N = 4, 16
T = K + 1 + N


# ---------------------------------------------------------------------------------------------- 1. pipeline call
def test_guidance_scale_maps_onto_sampling_params(pipe):
    a = pipe([1, 2], guidance_scale=4.0, prologue_guidance_scale=0.7, generator=_seeded(0), return_ids=True).ids
    params = SamplingParams(prologue_guidance=GuidanceSchedule(0.7), visual_guidance=GuidanceSchedule(4.0))
    b = pipe([1, 2], sampling=params, generator=_seeded(0), return_ids=True).ids
    assert torch.equal(a, b)
    unguided = pipe([1, 2], generator=_seeded(0), return_ids=True).ids
    assert not torch.equal(a, unguided)  # guidance changes the draws of this seed
    # the scale overrides the preset's visual schedule only: the prologue constant 0.7 and the temperatures stay
    c = pipe([1, 2], sampling="prologue-B-B", guidance_scale=3.0, generator=_seeded(1), return_ids=True).ids
    preset = SamplingParams.from_preset("prologue-B-B", visual_guidance=GuidanceSchedule(3.0))
    d = pipe([1, 2], sampling=preset, generator=_seeded(1), return_ids=True).ids
    assert torch.equal(c, d)
    # global mode (baselines): guidance_scale replaces the global schedule, a prologue scale is refused
    e = pipe([3], sampling="1d-B-B", guidance_scale=2.0, generator=_seeded(2), return_ids=True).ids
    f = pipe([3], sampling=SamplingParams(guidance=GuidanceSchedule(2.0)), generator=_seeded(2), return_ids=True).ids
    assert torch.equal(e, f)
    with pytest.raises(ValueError, match="prologue_guidance_scale needs segmented guidance"):
        pipe([3], sampling="1d-B-B", prologue_guidance_scale=0.7)
    with pytest.raises(ValueError, match="guidance_scale must be a number"):
        pipe([3], guidance_scale="4")


def test_num_images_per_prompt_is_num_images_per_label(pipe):
    a = pipe([1, 2], num_images_per_prompt=2, generator=_seeded(0), return_ids=True).ids
    b = pipe([1, 2], num_images_per_label=2, generator=_seeded(0), return_ids=True).ids
    assert a.shape[0] == 4 and torch.equal(a, b)
    with pytest.raises(ValueError, match="name the same setting"):
        pipe([1], num_images_per_label=2, num_images_per_prompt=3)


def test_generator_list_reproduces_images_drawn_one_at_a_time(pipe):
    for sampling in (None, "prologue-B-B"):
        labels, seeds = [1, 2, 2, 7], [11, 12, 13, 14]
        batch = pipe(labels, sampling=sampling, generator=[_seeded(s) for s in seeds], output_type="np", return_ids=True)
        for i, (label, seed) in enumerate(zip(labels, seeds)):
            single = pipe([label], sampling=sampling, generator=[_seeded(seed)], output_type="np", return_ids=True)
            assert torch.equal(batch.ids[i], single.ids[0]), (sampling, i)
            np.testing.assert_allclose(batch.images[i], single.images[0], atol=1e-5)
        # generator i alone: changing generator 0 leaves the other images as they were
        other = pipe(labels, sampling=sampling, generator=[_seeded(99)] + [_seeded(s) for s in seeds[1:]], return_ids=True)
        assert torch.equal(other.ids[1:], batch.ids[1:]) and not torch.equal(other.ids[0], batch.ids[0])
    with pytest.raises(ValueError, match="one per image"):
        pipe([1, 2], num_images_per_label=2, generator=[_seeded(0)] * 3)
    with pytest.raises(ValueError, match="generator must be"):
        pipe([1], generator=[0])


def test_callback_on_step_end_sees_and_steers_the_ids(pipe):
    seen = []

    def record(pipeline, step, timestep, kwargs):
        assert pipeline is pipe and timestep == step and set(kwargs) == {"ids"}
        seen.append(kwargs["ids"].clone())
        return {}

    out = pipe([1, 2], generator=_seeded(0), return_ids=True, callback_on_step_end=record,
               callback_on_step_end_tensor_inputs=["ids"])
    assert len(seen) == T and [s.shape for s in seen] == [torch.Size([2, i + 1]) for i in range(T)]
    assert torch.equal(seen[-1], out.ids)

    vocab = pipe.ar.config.vocabulary
    forced_id = int(torch.nonzero(vocab.logit_mask()[K + 1].isfinite())[5])  # the 6th id allowed at visual step 0

    def steer(pipeline, step, timestep, kwargs):  # force the first visual id of every image
        if step == K + 1:
            ids = kwargs["ids"].clone()
            ids[:, -1] = forced_id
            return {"ids": ids}
        return {}

    steered = pipe([1, 2], generator=_seeded(0), return_ids=True, callback_on_step_end=steer)
    assert (steered.ids[:, K + 1] == forced_id).all()
    assert torch.equal(steered.ids[:, : K + 1], out.ids[:, : K + 1])  # before the step: unchanged

    def bad(pipeline, step, timestep, kwargs):
        return {"ids": torch.zeros_like(kwargs["ids"])}  # changes earlier columns / puts a class id at step 0

    with pytest.raises(ValueError, match="callback_on_step_end returned ids"):
        pipe([1, 2], generator=_seeded(0), callback_on_step_end=bad)

    def out_of_vocabulary(pipeline, step, timestep, kwargs):
        ids = kwargs["ids"].clone()
        ids[:, -1] = 10_000
        return {"ids": ids}

    with pytest.raises(ValueError, match="not allowed at generated position 0"):
        pipe([1, 2], generator=_seeded(0), callback_on_step_end=out_of_vocabulary)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe([1], callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents"])


def test_old_callback_still_works_with_a_deprecation_warning(pipe):
    steps = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe([1], generator=_seeded(0), callback=lambda step, ids: steps.append((step, ids.shape)))
    assert steps == [(s, torch.Size([1])) for s in range(T)]
    assert any(issubclass(w.category, FutureWarning) and "callback_on_step_end" in str(w.message) for w in caught)


# ---------------------------------------------------------------------------------------------- 2. offload
def _quiet_pipeline(seed: int = 0):
    """A fresh tiny pipeline (its own weights, free to be hooked or offloaded) with its progress bar off."""
    pipeline = tiny_pipeline(seed=seed)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _assert_same_draw(out, expected) -> None:
    assert torch.equal(out.ids, expected.ids)
    np.testing.assert_allclose(out.images, expected.images, atol=1e-5)


def test_sequential_cpu_offload_with_accelerate_hooks():
    from accelerate import cpu_offload

    reference = _quiet_pipeline()
    expected = reference([1, 2], sampling="prologue-B-B", generator=_seeded(0), output_type="np", return_ids=True)

    pipeline = _quiet_pipeline()
    cpu_offload(pipeline.ar, execution_device=torch.device("cpu"))
    cpu_offload(pipeline.tokenizer, execution_device=torch.device("cpu"))
    assert pipeline.ar.device.type == "meta" and pipeline._execution_device == torch.device("cpu")
    out = pipeline([1, 2], sampling="prologue-B-B", generator=_seeded(0), output_type="np", return_ids=True)
    _assert_same_draw(out, expected)
    assert pipeline.ar.lm_head.weight.device.type == "meta"  # offloaded again after use


def test_model_cpu_offload_with_accelerate_hooks():
    from accelerate import cpu_offload_with_hook

    reference = _quiet_pipeline()
    expected = reference([3], guidance_scale=3.0, generator=_seeded(5), output_type="np", return_ids=True)
    pipeline = _quiet_pipeline()
    _, ar_hook = cpu_offload_with_hook(pipeline.ar, execution_device="cpu")
    cpu_offload_with_hook(pipeline.tokenizer, execution_device="cpu", prev_module_hook=ar_hook)
    out = pipeline([3], guidance_scale=3.0, generator=_seeded(5), output_type="np", return_ids=True)
    _assert_same_draw(out, expected)


def test_diffusers_enable_model_cpu_offload():
    reference = _quiet_pipeline()
    expected = reference([1, 2], sampling="prologue-B-B", generator=_seeded(4), output_type="np", return_ids=True)
    pipeline = _quiet_pipeline()
    pipeline.enable_model_cpu_offload(device="cpu")  # diffusers' own call, accelerate's hooks on both components
    assert hasattr(pipeline.ar, "_hf_hook") and hasattr(pipeline.tokenizer, "_hf_hook")
    out = pipeline([1, 2], sampling="prologue-B-B", generator=_seeded(4), output_type="np", return_ids=True)
    _assert_same_draw(out, expected)


def test_packed_swap_is_skipped_on_hooked_models():
    from accelerate import cpu_offload_with_hook

    from prologue_hf.models.packed_linear import packed_kernel, packed_linears
    from prologue_hf.pipelines.sampling import execution_device

    ar = tiny_ar()
    if packed_kernel(torch.float32, torch.device("cpu")) == "linear":
        pytest.skip("no packed CPU kernel in this build")
    with packed_linears(ar, rows=2) as swapped:
        assert swapped
    cpu_offload_with_hook(ar, execution_device="cpu")
    with packed_linears(ar, rows=2) as swapped:
        assert swapped == [] and type(ar.lm_head) is torch.nn.Linear
    assert execution_device(ar) == torch.device("cpu")


# ---------------------------------------------------------------------------------------------- 3./4. fresh processes
_FRESH_DIFFUSERS = """
import sys, numpy, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], custom_pipeline="pipeline", trust_remote_code=True)
print(type(pipe).__name__)
images = pipe(["class 2", 5], guidance_scale=3.0, generator=torch.Generator().manual_seed(3), output_type="np").images
numpy.save(sys.argv[2], images)
"""

_FRESH_AUTO = """
import sys, torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
folder, inputs = sys.argv[1], torch.load(sys.argv[2], weights_only=True)
ar = AutoModelForCausalLM.from_pretrained(folder + "/ar", trust_remote_code=True)
base = AutoModel.from_pretrained(folder + "/ar", trust_remote_code=True)
tok = AutoModel.from_pretrained(folder + "/tokenizer", trust_remote_code=True)
config = AutoConfig.from_pretrained(folder + "/ar", trust_remote_code=True)
with torch.no_grad():
    torch.save({"logits": ar(inputs["ids"]).logits, "hidden": base(inputs["ids"]).last_hidden_state,
                "pixels": tok.decode(inputs["visual_ids"]).pixel_values}, sys.argv[3])
print(type(ar).__name__, type(base).__name__, type(tok).__name__, type(config).__name__)
"""


def _fresh(code: str, *args, tmp_path) -> str:
    """Run ``code`` in a new interpreter that has not imported prologue_hf (asserted first) and return its last
    output line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    prelude = "import sys\nassert 'prologue_hf' not in sys.modules\n"
    result = subprocess.run(
        [sys.executable, "-c", prelude + code, *map(str, args)],
        capture_output=True, text=True, env=env, timeout=300, cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_diffusion_pipeline_loads_the_saved_folder_in_a_fresh_process(tmp_path):
    pipeline = _quiet_pipeline(seed=1)
    pipeline.save_pretrained(tmp_path / "pipe")
    assert (tmp_path / "pipe" / "pipeline.py").read_text().startswith(
        "from prologue_hf.pipelines.pipeline_prologue import ProloguePipeline"
    )
    name = _fresh(_FRESH_DIFFUSERS, tmp_path / "pipe", tmp_path / "images.npy", tmp_path=tmp_path)
    assert name == "ProloguePipeline"
    expected = pipeline(["class 2", 5], guidance_scale=3.0, generator=_seeded(3), output_type="np").images
    np.testing.assert_array_equal(np.load(tmp_path / "images.npy"), expected)


def test_auto_classes_load_with_trust_remote_code_in_a_fresh_process(tmp_path):
    from transformers import AutoModel, AutoModelForCausalLM

    pipeline = tiny_pipeline(seed=2)
    pipeline.save_pretrained(tmp_path / "pipe")
    ar_folder = tmp_path / "pipe" / "ar"
    config = json.loads((ar_folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_prologue_ar.PrologueARConfig",
        "AutoModel": "modeling_prologue_ar.PrologueARModel",
        "AutoModelForCausalLM": "modeling_prologue_ar.PrologueARForCausalLM",
    }
    assert (ar_folder / "modeling_prologue_ar.py").read_text() == (
        "from prologue_hf.models.modeling_prologue_ar import PrologueARModel, PrologueARForCausalLM  # noqa: F401\n"
    )
    assert not hasattr(pipeline.ar.config, "auto_map") or pipeline.ar.config.auto_map is None  # not left behind

    vocab = pipeline.ar.config.vocabulary
    visual = torch.arange(N)[None] % 64
    ids = vocab.build_sequence(torch.tensor([3]), visual, torch.tensor([[1, 2, 3, 4]]))
    torch.save({"ids": ids, "visual_ids": visual}, tmp_path / "inputs.pt")
    names = _fresh(_FRESH_AUTO, tmp_path / "pipe", tmp_path / "inputs.pt", tmp_path / "out.pt", tmp_path=tmp_path)
    assert names == "PrologueARForCausalLM PrologueARModel PrologueTokenizerModel PrologueARConfig"
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    with torch.no_grad():
        assert torch.equal(out["logits"], pipeline.ar(ids).logits)
        assert torch.equal(out["hidden"], pipeline.ar.model(ids).last_hidden_state)
        assert torch.equal(out["pixels"], pipeline.tokenizer.decode(visual).pixel_values)
    # after `import prologue_hf` (this process) the registered classes load the same folders without remote code
    assert type(AutoModelForCausalLM.from_pretrained(ar_folder)).__module__ == "prologue_hf.models.modeling_prologue_ar"
    assert type(AutoModel.from_pretrained(tmp_path / "pipe" / "tokenizer")).__name__ == "PrologueTokenizerModel"


# ---------------------------------------------------------------------------------------------- 5. card and Hub
def test_model_card_says_what_the_default_sampling_is_and_names_the_classes(pipe):
    text = str(prologue_model_card(pipe, repo_id="me/tiny"))
    assert "Default sampling: no guidance; temperature 1; no top-k / top-p." in text and "Default sampling: custom" not in text
    assert "Classes (10): 0: class 0, 1: class 1" in text
    assert 'guidance_scale=4.0' in text and 'custom_pipeline="pipeline", trust_remote_code=True' in text
    custom = tiny_pipeline(default_sampling=SamplingParams(visual_guidance=GuidanceSchedule(3.0, "cosine", 0.5),
                                                           temperature=0.9, top_k=5))
    assert ("Default sampling: prologue steps unguided; visual guidance cosine from 1 to 3, power 0.5; "
            "temperature 0.9; top-k 5.") in str(prologue_model_card(custom))
    assert describe_sampling("prologue-B-B") == (
        "`prologue-B-B` (paper Table A5): prologue guidance constant 0.7; visual guidance cosine from 1 to 3.75, "
        "power 0.2; temperature 1; no top-k / top-p"
    )
    imagenet = str(prologue_model_card(tiny_pipeline(num_classes=1000)))
    assert "Classes (1000): 0: tench" in imagenet and "names in `model_index.json`" in imagenet


def _mock_api(uploads: list):
    def upload_folder(repo_id, folder_path, path_in_repo, commit_message, create_pr):
        uploads.append(dict(
            repo_id=repo_id, path_in_repo=path_in_repo, files=sorted(os.listdir(folder_path)),
            readme=open(os.path.join(folder_path, "README.md")).read(),
        ))
        return "commit-info"

    api = mock.MagicMock()
    api.create_repo.return_value.repo_id = "someone/prologue-tiny"
    api.upload_folder.side_effect = upload_folder
    return api


def test_save_pretrained_push_to_hub_uses_our_card_and_push_keeps_subfolder(pipe, tmp_path):
    uploads = []
    api = _mock_api(uploads)
    with mock.patch.object(pipeline_prologue, "HfApi", return_value=api) as hf_api:
        pipe.save_pretrained(tmp_path / "prologue-tiny", push_to_hub=True, token="hf_x", private=True)
        pipe.push_to_hub("prologue-tiny", subfolder="runs/a", token="hf_x")
    assert hf_api.call_args_list == [mock.call(token="hf_x")] * 2
    api.create_repo.assert_any_call("prologue-tiny", private=True, exist_ok=True)
    saved, pushed = uploads
    assert saved["path_in_repo"] is None and pushed["path_in_repo"] == "runs/a"
    for upload in uploads:
        assert upload["files"] == ["README.md", "ar", "model_index.json", "pipeline.py", "tokenizer"]
        assert "library_name: prologue-hf" in upload["readme"] and "Default sampling: no guidance" in upload["readme"]
    assert 'allow_patterns="runs/a/*"' in pushed["readme"]
    assert (tmp_path / "prologue-tiny" / "README.md").read_text() == saved["readme"]
    with pytest.raises(ValueError, match="only apply with push_to_hub=True"):
        pipe.save_pretrained(tmp_path / "x", token="hf_x")


# ---------------------------------------------------------------------------------------------- 6. generate()
def _generate_inputs(ar, labels):
    vocab = ar.config.vocabulary
    prompt = vocab.class_token_ids(labels)[:, None]
    return vocab, prompt, torch.full_like(prompt, vocab.null_class_id)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_generate_cfg_equals_the_library_greedy_id_for_id(scale):
    ar = tiny_ar(seed=3)
    labels = torch.tensor([1, 2, 7])
    vocab, prompt, negative = _generate_inputs(ar, labels)
    out = ar.generate(input_ids=prompt, do_sample=False, guidance_scale=scale, negative_prompt_ids=negative,
                      logits_processor=[PrologueSegmentLogitsProcessor(vocab)])
    library = generate_ids(ar, labels, SamplingParams(guidance=GuidanceSchedule(scale), top_k=1))
    assert out.shape == (3, 1 + T) and torch.equal(out[:, 1:], library.ids)
    if scale != 1.0:  # guidance changes the result here: the equality is not the unguided one twice
        unguided = generate_ids(ar, labels, SamplingParams(top_k=1))
        assert not torch.equal(unguided.ids, library.ids)


def test_generate_cfg_samples_from_the_library_distribution():
    ar = tiny_ar(seed=4)
    labels = torch.tensor([1, 5])
    vocab, prompt, negative = _generate_inputs(ar, labels)
    torch.manual_seed(0)
    out = ar.generate(input_ids=prompt, guidance_scale=3.0, negative_prompt_ids=negative, output_scores=True,
                      return_dict_in_generate=True, logits_processor=[PrologueSegmentLogitsProcessor(vocab)])
    sequence = out.sequences  # [B, 1 + T], sampled with the shipped generation_config
    assert sequence.shape == (2, 1 + T)
    plan = StepPlan.build(vocab, SamplingParams(guidance=GuidanceSchedule(3.0)))
    with torch.no_grad():
        cond = ar(sequence[:, :-1]).logits
        uncond = ar(torch.cat([negative, sequence[:, 1:-1]], dim=1)).logits
    for step, scores in enumerate(out.scores):
        library = plan.final_logits(torch.cat([cond[:, step], uncond[:, step]]), 2, step)
        torch.testing.assert_close(scores.softmax(-1), library.softmax(-1), atol=1e-5, rtol=1e-4)


def test_generate_refuses_guidance_without_the_null_class_and_ships_a_generation_config(tmp_path, caplog):
    ar = tiny_ar(seed=5)
    labels = torch.tensor([1, 2])
    vocab, prompt, negative = _generate_inputs(ar, labels)
    with pytest.raises(ValueError, match="negative_prompt_ids"):
        ar.generate(input_ids=prompt, guidance_scale=3.0, logits_processor=[PrologueSegmentLogitsProcessor(vocab)])
    with caplog.at_level("WARNING"):
        ar.generate(input_ids=prompt, guidance_scale=3.0, negative_prompt_ids=prompt,
                    logits_processor=[PrologueSegmentLogitsProcessor(vocab)])
    assert "null class token" in caplog.text

    ar.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["max_new_tokens"] == T and saved["do_sample"] is True and saved["top_k"] == 0
    assert saved.get("eos_token_id") is None
    from prologue_hf import PrologueARForCausalLM

    reloaded = PrologueARForCausalLM.from_pretrained(tmp_path)
    out = reloaded.generate(input_ids=prompt, logits_processor=[PrologueSegmentLogitsProcessor(vocab)])
    assert out.shape == (2, 1 + T)  # the whole sequence, through the mid-sequence EOS
    prologue, visual = vocab.split(out)
    assert prologue.shape == (2, K) and visual.shape == (2, N)


# ---------------------------------------------------------------------------------------------- 9. train_ar outputs
def test_train_ar_writes_class_names_and_a_ready_to_load_pipeline(tmp_path):
    from pathlib import Path

    import PIL.Image

    from prologue_hf import PrologueARForCausalLM
    from prologue_hf.pipelines import ProloguePipeline
    from prologue_hf.testing import tiny_tokenizer
    from prologue_hf.training.ar_recipe import parse_ar_args, train_ar
    from prologue_hf.training.image_data import load_image_dataset
    from prologue_hf.training.pretokenize import PretokenizeConfig, pretokenize_dataset

    rng = np.random.default_rng(0)
    names = ["Sneaker", "Bag", "Ankle boot"]
    for name in names:
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(4):
            PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "images" / name / f"{i}.png")
    tokenizer = tiny_tokenizer(seed=0)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    images = load_image_dataset(str(tmp_path / "images"))
    pretokenize_dataset(tokenizer, images, PretokenizeConfig(str(tmp_path / "ids"), batch_size=4), source="images")
    config = Path(__file__).resolve().parents[1] / "examples" / "configs" / "ar_tiny_cpu.yaml"
    script, args = parse_ar_args([
        "--config", str(config), "--dataset_name_or_path", str(tmp_path / "ids"),
        "--tokenizer_name_or_path", str(tmp_path / "tokenizer"), "--output_dir", str(tmp_path / "run"),
        "--max_steps", "2", "--warmup_steps", "1", "--save_steps", "2", "--sample_steps", "0",
        "--ema_halflife_steps", "10", "--disable_tqdm", "true", "--report_to", "none",
    ])  # fmt: skip
    trainer = train_ar(script, args)

    class_names = images.features["label"].names
    ar = PrologueARForCausalLM.from_pretrained(tmp_path / "run")
    assert ar.config.id2label == dict(enumerate(class_names))
    pipeline = ProloguePipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert pipeline.config.id2label == {str(i): name for i, name in enumerate(class_names)} or pipeline.config.id2label == dict(enumerate(class_names))
    for name, tensor in trainer.ema.model.state_dict().items():  # the EMA weights are the ones shipped
        assert torch.equal(pipeline.ar.state_dict()[name], tensor), name
    for name, tensor in tokenizer.state_dict().items():
        assert torch.equal(pipeline.tokenizer.state_dict()[name], tensor), name
    pipeline.set_progress_bar_config(disable=True)
    out = pipeline("Sneaker", generator=_seeded(0), output_type="np", return_ids=True)
    assert out.images.shape == (1, 32, 32, 3)
    assert pipeline.get_label_ids(["sneaker", "ankle boot"]) == [class_names.index("Sneaker"), class_names.index("Ankle boot")]


# ---------------------------------------------------------------------------------------------- 7./8. training CLIs
def test_train_tokenizer_help_is_short_at_the_top_and_grouped():
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "train_tokenizer.py"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "120"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "usage: train_tokenizer.py [-h] [--config YAML] [--FLAG VALUE ...]"
    assert lines[2].startswith("Stage 1 of Prologue: train the tokenizer")
    text = result.stdout
    groups = [line for line in lines if line and not line.startswith(" ") and line.endswith(":")]
    assert groups[0] == "options:" and groups[-1] == "transformers.TrainingArguments (inherited):"
    assert all(g.endswith("(Prologue):") for g in groups[1:-1]) and len(groups) >= 4
    config_at = text.index("--config YAML ")
    inherited_at = text.index("transformers.TrainingArguments (inherited):")
    assert config_at < text.index("--tokenizer_preset") < text.index("--ar_weight") < inherited_at
    assert text.index("--prologue_temperature_schedule") < inherited_at < text.index("--learning_rate LEARNING_RATE")


def test_config_flag_and_overrides_still_parse(tmp_path):
    from prologue_hf.training.ar_recipe import parse_ar_args

    (tmp_path / "c.yaml").write_text("dataset_name_or_path: some/ids\nmax_steps: 7\nreport_to: all\n")
    script, args = parse_ar_args(["--config", str(tmp_path / "c.yaml"), "--max_steps", "9", "--output_dir", "o"])
    assert script.dataset_name_or_path == "some/ids" and args.max_steps == 9
    assert args.report_to == []  # `all` = the installed trackers; none here, so the configs run without any


def test_paper_configs_run_without_trackers_installed():
    from pathlib import Path

    import yaml

    configs = sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        value = (yaml.safe_load(path.read_text()) or {}).get("report_to")
        assert value in (None, "none", "all", []), (path.name, value)


def test_grids_go_to_the_trackers():
    from transformers.integrations import TensorBoardCallback

    from prologue_hf.training.trackers import log_image_to_trackers

    tensorboard = object.__new__(TensorBoardCallback)  # no tensorboard installed here: its writer is a mock
    tensorboard.tb_writer = mock.MagicMock()
    wandb = type("WandbCallback", (), {"_initialized": True, "_wandb": mock.MagicMock()})()
    uninitialised = type("MLflowCallback", (), {"_initialized": False})()
    image = PIL.Image.new("RGB", (8, 6), (10, 20, 30))
    sent = log_image_to_trackers([tensorboard, wandb, uninitialised, object()], "samples", image, 12)
    assert sent == ["TensorBoardCallback", "WandbCallback"]
    tag, array, step = tensorboard.tb_writer.add_image.call_args.args
    assert (tag, step, tensorboard.tb_writer.add_image.call_args.kwargs) == ("samples", 12, {"dataformats": "HWC"})
    assert array.shape == (6, 8, 3) and (array == np.array([10, 20, 30], dtype=np.uint8)).all()
    wandb._wandb.Image.assert_called_once_with(image)
    broken = object.__new__(TensorBoardCallback)
    broken.tb_writer = mock.MagicMock()
    broken.tb_writer.add_image.side_effect = RuntimeError("disk full")
    assert log_image_to_trackers([broken], "samples", image, 1) == []  # logged, training goes on


def test_ar_sample_grids_reach_the_trackers(tmp_path):
    from prologue_hf.testing import tiny_tokenizer
    from prologue_hf.training.trainer_ar import PrologueARSampleGridCallback

    callback = PrologueARSampleGridCallback(tiny_tokenizer(), [0, 1, 2], every_n_steps=1, seed=0)
    tracker = type("WandbCallback", (), {"_initialized": True, "_wandb": mock.MagicMock()})()
    callback.tracker_callbacks = [tracker]
    state = mock.MagicMock(global_step=3, is_world_process_zero=True)
    args = mock.MagicMock(output_dir=str(tmp_path))
    callback.on_step_end(args, state, None, model=tiny_ar())
    logged = tracker._wandb.log.call_args.args[0]
    assert logged["train/global_step"] == 3 and "samples" in logged
    grid = tracker._wandb.Image.call_args.args[0]
    assert grid.size == (64, 64)


# ---------------------------------------------------------------------------------------------- 10. evaluation CLI
def test_evaluate_package_is_not_shadowed_from_examples():
    from pathlib import Path

    examples = Path(__file__).resolve().parents[1] / "examples"
    assert not (examples / "evaluate.py").exists() and (examples / "evaluate_model.py").exists()
    result = subprocess.run(
        [sys.executable, "-c", "from prologue_hf.evaluation import load_metric; print(type(load_metric('psnr_ssim')).__name__)"],
        capture_output=True, text=True, timeout=300, cwd=str(examples), env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "PsnrSsim"


def test_a_folder_of_per_split_saved_datasets_loads_by_split(tmp_path):
    import datasets

    from prologue_hf.training.image_data import load_image_dataset

    for split, color in (("train", 10), ("test", 200)):
        images = [PIL.Image.new("RGB", (8, 8), (color, color, color)) for _ in range(3)]
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
        datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0]}, features=features).save_to_disk(tmp_path / split)
    test = load_image_dataset(str(tmp_path), split="test")
    assert len(test) == 3 and np.asarray(test[0]["image"])[0, 0, 0] == 200 and test.column_names == ["image", "label"]
    with pytest.raises(ValueError):
        load_image_dataset(str(tmp_path), split="validation")


# ---------------------------------------------------------------------------------------------- 11. library pieces
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_postprocess_through_vae_image_processor_keeps_every_bit(channels, dtype):
    from prologue_hf import PrologueTokenizerModel

    pixels = (torch.randn(3, channels, 17, 9, generator=_seeded(channels)) * 1.3).to(dtype)  # beyond [-1, 1] too
    expected = ((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0)  # the hand formula the library replaced
    pt = PrologueTokenizerModel.postprocess(pixels, "pt")
    assert pt.dtype == torch.float32 and torch.equal(pt, expected)
    array = PrologueTokenizerModel.postprocess(pixels, "np")
    assert array.dtype == np.float32 and np.array_equal(array, expected.permute(0, 2, 3, 1).numpy())
    uint8 = (expected.permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
    images = PrologueTokenizerModel.postprocess(pixels, "pil")
    assert [img.mode for img in images] == ["RGB" if channels == 3 else "L"] * 3
    for image, reference in zip(images, uint8):
        assert np.array_equal(np.asarray(image), reference if channels == 3 else reference[..., 0])
    assert torch.equal(PrologueTokenizerModel.postprocess(pixels, "uint8"), torch.from_numpy(uint8).permute(0, 3, 1, 2))
