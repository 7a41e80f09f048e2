"""ProloguePipeline: outputs, reproducibility, save / reload (also in a fresh process), labels, fixed prologues,
bad inputs, model card and push_to_hub up to the network call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from unittest import mock

import numpy as np
import PIL.Image
import pytest
import torch

from prologue_hf.pipelines import (
    ProloguePipeline,
    ProloguePipelineOutput,
    SamplingParams,
    pipeline_prologue,
    prologue_model_card,
)
from prologue_hf.testing import seeded_generator as _seeded
from prologue_hf.testing import tiny_ar, tiny_pipeline, tiny_tokenizer, tiny_tokenizer_config

K = 4


def test_output_is_the_decoded_visual_ids(pipe):
    out = pipe([3, "class 7"], num_images_per_label=2, generator=_seeded(0), output_type="pt", return_ids=True)
    assert isinstance(out, ProloguePipelineOutput)
    assert out.images.shape == (4, 3, 32, 32) and out.ids.shape == (4, 21) and out.visual_ids.shape == (4, 16)
    assert float(out.images.min()) >= 0.0 and float(out.images.max()) <= 1.0
    with torch.no_grad():
        expected = pipe.tokenizer.postprocess(pipe.tokenizer.decode(out.visual_ids).pixel_values, "pt")
    torch.testing.assert_close(out.images, expected, rtol=0, atol=0)
    # labels repeat per image, in order: the class token of each row is the label's
    vocab = pipe.ar.config.vocabulary
    assert torch.equal(out.prologue_ids + vocab.prologue_offset, out.ids[:, :K])


def test_same_generator_same_images_and_output_types_agree(pipe):
    kwargs = dict(class_labels=[1, 2], sampling="prologue-B-B")
    a = pipe(generator=_seeded(7), output_type="np", **kwargs).images
    b = pipe(generator=_seeded(7), output_type="np", **kwargs).images
    c = pipe(generator=_seeded(8), output_type="np", **kwargs).images
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    pil = pipe(generator=_seeded(7), **kwargs).images
    assert isinstance(pil[0], PIL.Image.Image) and pil[0].size == (32, 32)
    np.testing.assert_array_equal(np.asarray(pil[1]), (a[1] * 255).round().astype(np.uint8))
    pt = pipe(generator=_seeded(7), output_type="pt", **kwargs).images
    np.testing.assert_array_equal(pt.permute(0, 2, 3, 1).numpy(), a)
    images, ids = pipe(generator=_seeded(7), output_type="np", return_dict=False, return_ids=True, **kwargs)
    np.testing.assert_array_equal(images, a)
    assert ids.shape == (2, 21)


def test_fixed_prologue_row(pipe):
    prologue = torch.tensor([5, 0, 15, 9])
    out = pipe(4, num_images_per_label=4, prologue_ids=prologue, generator=_seeded(1), output_type="np", return_ids=True)
    assert torch.equal(out.prologue_ids, prologue.expand(4, K))
    assert len({tuple(row.tolist()) for row in out.visual_ids}) > 1
    # one prologue per label, repeated over that label's images
    per_label = torch.tensor([[1, 2, 3, 4], [9, 9, 9, 9]])
    out = pipe([0, 1], num_images_per_label=2, prologue_ids=per_label, generator=_seeded(1), return_ids=True)
    assert torch.equal(out.prologue_ids, per_label.repeat_interleave(2, 0))


def test_save_and_reload_gives_the_same_images(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "ProloguePipeline"
    assert index["tokenizer"] == ["prologue_hf.pipelines", "PrologueTokenizerModel"]
    assert index["ar"] == ["prologue_hf.pipelines", "PrologueARForCausalLM"]
    assert index["id2label"]["3"] == "class 3"
    assert (tmp_path / "tokenizer" / "model.safetensors").is_file() and (tmp_path / "ar" / "model.safetensors").is_file()
    reloaded = ProloguePipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    for (name, a), b in zip(pipe.ar.state_dict().items(), reloaded.ar.state_dict().values()):
        assert torch.equal(a, b), name
    a = pipe([2, 5], generator=_seeded(3), output_type="np", sampling="prologue-B-B").images
    b = reloaded([2, 5], generator=_seeded(3), output_type="np", sampling="prologue-B-B").images
    np.testing.assert_array_equal(a, b)
    assert reloaded.get_label_ids("class 5") == [5]


_FRESH_PROCESS = r"""
import sys, numpy, torch
from prologue_hf.pipelines import ProloguePipeline
pipe = ProloguePipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
images = pipe(["class 2", 5], generator=torch.Generator().manual_seed(3), output_type="np").images
numpy.save(sys.argv[2], images)
print(pipe.config.default_sampling)
"""


def test_reload_in_a_fresh_process(tmp_path):
    pipeline = tiny_pipeline(seed=1, default_sampling="prologue-B-B")
    pipeline.set_progress_bar_config(disable=True)
    pipeline.save_pretrained(tmp_path / "pipe")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, str(tmp_path / "pipe"), str(tmp_path / "images.npy")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "prologue-B-B"
    expected = pipeline(["class 2", 5], generator=_seeded(3), output_type="np").images
    np.testing.assert_array_equal(np.load(tmp_path / "images.npy"), expected)


def test_default_sampling_is_stored_and_used(tmp_path):
    custom = SamplingParams.from_preset("prologue-B-B", top_k=3)
    pipeline = tiny_pipeline(default_sampling=custom)
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline.config.default_sampling == custom.to_dict()
    a = pipeline(1, generator=_seeded(0), return_ids=True).ids
    b = pipeline(1, generator=_seeded(0), sampling=custom, return_ids=True).ids
    assert torch.equal(a, b)
    pipeline.save_pretrained(tmp_path)
    assert ProloguePipeline.from_pretrained(tmp_path).config.default_sampling == custom.to_dict()
    with pytest.raises(ValueError, match="unknown sampling preset"):
        tiny_pipeline(default_sampling="nope")


def test_label_names(pipe):
    assert pipe.get_label_ids("class 3") == [3]
    assert pipe.get_label_ids(["Class 1", " class 9 "]) == [1, 9]
    with pytest.raises(ValueError, match=r"unknown label name 'clas 3'; close matches: \['class 3'"):
        pipe.get_label_ids("clas 3")
    with pytest.raises(ValueError, match="unknown label name 'zebra'"):
        pipe([0, "zebra"])


def test_imagenet_names_by_default_for_1000_classes():
    tokenizer = tiny_tokenizer(0)
    pipeline = ProloguePipeline(tokenizer=tokenizer, ar=tiny_ar(tokenizer.config, num_classes=1000))
    assert pipeline.get_label_ids("golden retriever") == [207]
    assert pipeline.get_label_ids(["tench", "goldfish"]) == [0, 1]
    assert pipeline.config.id2label[999] == "toilet tissue"
    with pytest.raises(ValueError, match="close matches: \\['golden retriever'"):
        pipeline.get_label_ids("golden retreiver")
    # 10 classes without names: ids only
    bare = ProloguePipeline(tokenizer=tokenizer, ar=tiny_ar(tokenizer.config))
    with pytest.raises(ValueError, match="no id2label names"):
        bare.get_label_ids("tench")


def test_bad_inputs(pipe):
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 10\]"):
        pipe([11])
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 10\]"):
        pipe(-1)
    with pytest.raises(ValueError, match=r"prologue_ids must have shape \[4\] or \[n, 4\]"):
        pipe(1, prologue_ids=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"prologue_ids must lie in \[0, 16\)"):
        pipe(1, prologue_ids=torch.tensor([0, 1, 2, 16]))
    with pytest.raises(ValueError, match="prologue_ids has 3 rows"):
        pipe([1, 2], prologue_ids=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        pipe(1, sampling=SamplingParams(temperature=-1.0))
    with pytest.raises(ValueError, match="output_type must be one of"):
        pipe(1, output_type="latent")
    with pytest.raises(ValueError, match="num_images_per_label must be an integer >= 1"):
        pipe(1, num_images_per_label=0)
    with pytest.raises(ValueError, match="id2label key 12 is outside"):
        ProloguePipeline(tokenizer=pipe.tokenizer, ar=pipe.ar, id2label={12: "x"})


def test_mismatched_components_are_refused():
    tokenizer = tiny_tokenizer(0)
    other = tiny_ar(tiny_tokenizer_config(visual_codebook_size=32))
    with pytest.raises(ValueError, match="tokenizer and AR vocabularies do not match"):
        ProloguePipeline(tokenizer=tokenizer, ar=other)
    with pytest.raises(ValueError, match="ar must be a PrologueARForCausalLM"):
        ProloguePipeline(tokenizer=tokenizer, ar=torch.nn.Linear(2, 2))


def test_to_dtype_and_progress_bar(capsys):
    pipeline = tiny_pipeline(seed=0).to(torch.bfloat16)
    assert pipeline.ar.dtype == torch.bfloat16 and pipeline.tokenizer.dtype == torch.bfloat16
    steps = []
    images = pipeline([1, 2], generator=_seeded(0), output_type="pt", callback=lambda s, ids: steps.append(s)).images
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    assert steps == list(range(21))
    assert "21/21" in capsys.readouterr().err  # the progress bar counts sampling steps


def test_model_card_and_push_to_hub_up_to_the_network(pipe):
    card = prologue_model_card(pipe, repo_id="someone/prologue-tiny", license="apache-2.0")
    assert card.data.library_name == "prologue-hf" and card.data.license == "apache-2.0"
    assert "prologue" in card.data.tags
    text = str(card)
    assert "# someone/prologue-tiny" in text and 'ProloguePipeline.from_pretrained("someone/prologue-tiny")' in text
    assert "4 prologue tokens" in text and "16" in text and "arXiv:2605.06137" in text
    assert f"{sum(p.numel() for p in pipe.ar.parameters()) / 1e3:.1f}K" in text

    uploaded = {}

    def upload_folder(repo_id, folder_path, path_in_repo, commit_message, create_pr):
        uploaded.update(
            repo_id=repo_id, files=sorted(os.listdir(folder_path)), commit=commit_message, path_in_repo=path_in_repo,
            readme=open(os.path.join(folder_path, "README.md")).read(),
            index=json.load(open(os.path.join(folder_path, "model_index.json"))),
        )
        return "commit-info"

    api = mock.MagicMock()
    api.create_repo.return_value.repo_id = "someone/prologue-tiny"
    api.upload_folder.side_effect = upload_folder
    with mock.patch.object(pipeline_prologue, "HfApi", return_value=api) as hf_api:
        result = pipe.push_to_hub("prologue-tiny", private=True, token="hf_dummy")
    hf_api.assert_called_once_with(token="hf_dummy")
    api.create_repo.assert_called_once_with("prologue-tiny", private=True, exist_ok=True)
    assert result == "commit-info"
    assert uploaded["repo_id"] == "someone/prologue-tiny"
    assert uploaded["files"] == ["README.md", "ar", "model_index.json", "pipeline.py", "tokenizer"]
    assert uploaded["path_in_repo"] is None
    assert uploaded["index"]["ar"] == ["prologue_hf.pipelines", "PrologueARForCausalLM"]
    assert "library_name: prologue-hf" in uploaded["readme"] and "someone/prologue-tiny" in uploaded["readme"]


def _documented_defaults(section: str, first_column: str = "argument") -> dict[str, str]:
    """``{name: default}`` of the first table under the heading that starts with ``section`` in docs/sampling.md."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "sampling.md").read_text()
    lines = text[text.index(section) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        name, default = (cell.strip() for cell in line.strip("|").split("|")[:2])
        rows[name.strip("`")] = default.strip("`")
    return rows


def test_documented_defaults_match_the_signatures():
    import dataclasses
    import inspect

    from prologue_hf.pipelines import GuidanceSchedule, generate_ids

    def signature_defaults(fn) -> dict[str, str]:
        params = list(inspect.signature(fn).parameters.values())
        return {
            p.name: "required" if p.default is inspect.Parameter.empty else repr(p.default).replace("'", '"')
            for p in params
            if p.name != "self"
        }

    def field_defaults(cls) -> dict[str, str]:
        return {f.name: repr(f.default).replace("'", '"') for f in dataclasses.fields(cls)}

    assert _documented_defaults("## `ProloguePipeline(") == signature_defaults(ProloguePipeline.__init__)
    assert _documented_defaults("### `pipe(...)`") == signature_defaults(ProloguePipeline.__call__)
    assert _documented_defaults("## `generate_ids(") == signature_defaults(generate_ids)
    assert _documented_defaults("## `SamplingParams` and", "field") == field_defaults(SamplingParams)
    guidance_table = _documented_defaults("| `GuidanceSchedule` field", "`GuidanceSchedule` field")
    assert guidance_table == field_defaults(GuidanceSchedule)


def test_from_parts_tokenizer_and_ar_folders(tmp_path):
    from prologue_hf.testing import tiny_pipeline

    pipe = tiny_pipeline(seed=0)
    pipe.tokenizer.save_pretrained(tmp_path / "tokenizer")
    pipe.ar.save_pretrained(tmp_path / "ar")
    parts = ProloguePipeline.from_parts(None, str(tmp_path / "tokenizer"), str(tmp_path / "ar"))
    a = pipe([1, 2], generator=torch.Generator().manual_seed(0), output_type="pt").images
    b = parts([1, 2], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="both tokenizer_name_or_path and ar_name_or_path"):
        ProloguePipeline.from_parts(None, str(tmp_path / "tokenizer"), None)
