"""Bad inputs to the public API (issue 16): one table of cases, each asserting the exception type and that the
message names the argument, plus the inputs that are accepted and what they give.

``item`` in a case id is the issue's item number (2, 3, 4, 5, 6, 8, 9, 10) or ``ok`` for cases that already gave a
clear error before the issue. docs/reliability.md lists the same cases with their outcome.
"""

import io
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from prologue_hf import (
    PrologueARConfig,
    PrologueARForCausalLM,
    PrologueARModel,
    ProloguePostConfig,
    ProloguePostModel,
    PrologueTokenizerConfig,
    PrologueTokenizerModel,
)
from prologue_hf.identity import tokenizer_identity
from prologue_hf.models.modeling_prologue_tokenizer import PIXEL_RANGE_TOLERANCE, check_pixel_range
from prologue_hf.pipelines import ProloguePipeline, SamplingParams, generate_ids
from prologue_hf.testing import (
    TINY_TOKENIZER_KWARGS,
    random_pretokenized_dataset,
    tiny_ar,
    tiny_pipeline,
    tiny_tokenizer,
)
from prologue_hf.testing_post import tiny_post_model


# ------------------------------------------------------------------------------------------------ shared models
@cache
def _tokenizer() -> PrologueTokenizerModel:
    return tiny_tokenizer(seed=0)


@cache
def _pipeline() -> ProloguePipeline:
    return tiny_pipeline(seed=0)


@cache
def _post():
    return tiny_post_model()


def _images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    """``[B, 3, S, S]`` uniform in [-1, 1]."""
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _ids(batch: int = 2) -> torch.Tensor:
    return _tokenizer().encode(_images(batch)).visual_ids


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _sample(class_labels, **kwargs):
    return _pipeline()(class_labels, generator=_generator(), output_type="np", **kwargs)


@cache
def _saved_tokenizer() -> str:
    folder = os.path.join(_ROOT, "tokenizer")
    _tokenizer().save_pretrained(folder)
    return folder


@cache
def _saved_ar() -> str:
    folder = os.path.join(_ROOT, "ar")
    tiny_ar(num_hidden_layers=2).save_pretrained(folder)
    return folder


@cache
def _saved_post() -> str:
    folder = os.path.join(_ROOT, "post")
    tiny_post_model(num_hidden_layers=2).save_pretrained(folder)
    return folder


@cache
def _saved_pipeline() -> str:
    folder = os.path.join(_ROOT, "pipeline")
    _pipeline().save_pretrained(folder)
    return folder


def _copy(source: str, name: str, edit: Callable[[str], None]) -> str:
    """A copy of ``source`` under ``name`` with ``edit(copy)`` applied (the originals stay intact)."""
    target = os.path.join(_ROOT, name)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    edit(target)
    return target


def _edit_config(**changes) -> Callable[[str], None]:
    def edit(folder: str) -> None:
        path = os.path.join(folder, "config.json")
        with open(path) as handle:
            config = json.load(handle)
        config.update(changes)
        with open(path, "w") as handle:
            json.dump(config, handle)

    return edit


def _remove(*parts: str) -> Callable[[str], None]:
    def edit(folder: str) -> None:
        path = os.path.join(folder, *parts)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

    return edit


def _truncate_weights(folder: str) -> None:
    path = os.path.join(folder, "model.safetensors")
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])


def _image_file(array: np.ndarray, fmt: str, truncate: bool = False) -> PIL.Image.Image:
    """``array`` written as a ``fmt`` file in memory and opened again (as a user's file would be)."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, fmt)
    data = buffer.getvalue()
    return PIL.Image.open(io.BytesIO(data[: len(data) // 2] if truncate else data))


def _stage2_trainer(
    name: str, tokenizer: PrologueTokenizerModel | None = None, checkpoints: tuple[str, ...] = (), **overrides
):
    """A stage-2 trainer (1 step, no saving; ``overrides`` of its arguments) on 8 rows of ids recorded as
    ``tokenizer``'s, its output folder ``<scratch>/<name>`` holding the given sub-folders / files first."""
    from prologue_hf.training.pretokenize import PretokenizedInfo
    from prologue_hf.training.trainer_ar import PrologueARTrainer, PrologueARTrainingArguments

    tokenizer = tokenizer or _tokenizer()
    info = PretokenizedInfo.from_tokenizer(tokenizer, num_classes=10, num_images=8)
    dataset = random_pretokenized_dataset(info, 8)
    output_dir = os.path.join(_ROOT, name)
    for entry in checkpoints:
        os.makedirs(os.path.dirname(os.path.join(output_dir, entry)), exist_ok=True)
        if entry.endswith(".safetensors"):
            tiny_ar(tokenizer.config).save_pretrained(output_dir)
        else:
            os.makedirs(os.path.join(output_dir, entry), exist_ok=True)
    args = PrologueARTrainingArguments(
        output_dir, max_steps=1, per_device_train_batch_size=8, use_cpu=True, report_to="none", save_strategy="no",
        disable_tqdm=True, **overrides,
    )  # fmt: skip
    return PrologueARTrainer(tiny_ar(tokenizer.config), args, train_dataset=dataset)


def _stage2_checkpoint(name: str, identity: str, ema: bool = True) -> str:
    """A complete-looking stage-2 checkpoint folder whose AR config records ``identity`` (without ``ema/`` unless
    ``ema``: what a killed save left before issue 16)."""
    folder = os.path.join(_ROOT, name)
    tiny_ar(tokenizer_identity=identity).save_pretrained(folder)
    if ema:
        tiny_ar(tokenizer_identity=identity).save_pretrained(os.path.join(folder, "ema"))
    with open(os.path.join(folder, "trainer_state.json"), "w") as handle:
        json.dump({"global_step": 4}, handle)
    return folder


def _resume_stage2_on_other_ids():
    checkpoint = _stage2_checkpoint("run-a/checkpoint-4", tokenizer_identity(_tokenizer()))
    return _stage2_trainer("run-a", tokenizer=tiny_tokenizer(seed=1)).train(resume_from_checkpoint=checkpoint)


def _mismatched_pipeline_folder() -> str:
    folder = os.path.join(_ROOT, "mismatched-pipeline")
    ar = tiny_ar(tokenizer_identity=tokenizer_identity(_tokenizer()))
    ProloguePipeline(tiny_tokenizer(seed=1), ar, verify_tokenizer_identity=False).save_pretrained(folder)
    return folder


def _pretokenize_undecodable(name: str):
    from prologue_hf.training.image_data import load_image_dataset
    from prologue_hf.training.pretokenize import PretokenizeConfig, pretokenize_dataset

    root = os.path.join(_ROOT, name, "images")
    for i, cls in enumerate(("a", "a", "b")):  # two class folders: the labels come from them
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        with open(os.path.join(root, cls, f"{i}.png"), "wb") as handle:
            handle.write(b"\x89PNG not an image")
    images = load_image_dataset(root)
    config = PretokenizeConfig(os.path.join(_ROOT, name, "ids"), batch_size=2, shard_size=2)
    return pretokenize_dataset(_tokenizer(), images, config, process_index=0, num_processes=1)


_ROOT = ""  # set per session by the autouse fixture below


@pytest.fixture(scope="module", autouse=True)
def _scratch(tmp_path_factory):
    global _ROOT
    _ROOT = str(tmp_path_factory.mktemp("bad_inputs"))
    yield
    _saved_tokenizer.cache_clear()
    _saved_pipeline.cache_clear()


# ------------------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[], object]
    error: type[BaseException]
    match: str  # a regex the message must match; it names the argument


CASES = [
    # item 5: encode and the pixel range
    Case("5-encode-0-255-floats", lambda: _tokenizer().encode(_images() * 127.5 + 127.5), ValueError,
         r"pixel_values must lie in \[-1, 1\].*got values in \[.*255\].*x / 127\.5 - 1"),
    Case("5-encode-imagenet-normalised", lambda: _tokenizer().encode((_images() * 0.5 + 0.5 - 0.45) / 0.225),
         ValueError, r"pixel_values must lie in \[-1, 1\]"),
    Case("5-encode-nan", lambda: _tokenizer().encode(_images().index_fill(3, torch.tensor([5]), float("nan"))),
         ValueError, r"pixel_values has 192 NaN/Inf values of 6144"),
    Case("5-encode-inf", lambda: _tokenizer().encode(_images().index_fill(0, torch.tensor([1]), float("inf"))),
         ValueError, r"pixel_values has 3072 NaN/Inf values"),
    Case("5-forward-0-255", lambda: _tokenizer()(_images() * 127.5 + 127.5), ValueError, r"pixel_values must lie in"),
    Case("5-post-encode-0-255", lambda: _post().encode(_images(size=16) * 127.5 + 127.5), ValueError,
         r"pixel_values must lie in \[-1, 1\].*x / 127\.5 - 1"),
    Case("5-post-encode-nan", lambda: _post().encode(_images(size=16).index_fill(2, torch.tensor([0]), float("nan"))),
         ValueError, r"pixel_values has 96 NaN/Inf values"),
    # item 6: silent before
    Case("6-generate-ids-float-label", lambda: generate_ids(_pipeline().ar, [1.7], generator=_generator()), ValueError,
         r"class_labels must be integer class ids, got dtype torch\.float32"),
    Case("6-generate-ids-float-tensor", lambda: generate_ids(_pipeline().ar, torch.tensor([2.0]), generator=_generator()),
         ValueError, r"class_labels must be integer class ids"),
    Case("6-generate-ids-bool-label", lambda: generate_ids(_pipeline().ar, [True], generator=_generator()), ValueError,
         r"class_labels must be integer class ids, got dtype torch\.bool"),
    Case("6-pipeline-float-label", lambda: _sample([1.7]), ValueError, r"class_labels entries must be ints or names"),
    Case("6-pipeline-float-tensor", lambda: _sample(torch.tensor([1.7])), ValueError, r"class_labels entries must be ints"),
    Case("6-codebook-usage-ids-ge-V", lambda: _tokenizer().codebook_usage(_ids() + 64), ValueError,
         r"ids must lie in \[0, 64\) \(the visual codebook\)"),
    Case("6-codebook-usage-prologue-ids-ge-P", lambda: _tokenizer().codebook_usage(torch.tensor([3, 16]), "prologue"),
         ValueError, r"ids must lie in \[0, 16\) \(the prologue codebook\)"),
    Case("6-codebook-usage-negative", lambda: _tokenizer().codebook_usage(torch.tensor([-1, 2])), ValueError,
         r"ids must lie in \[0, 64\)"),
    Case("6-codebook-usage-float-ids", lambda: _tokenizer().codebook_usage(torch.tensor([1.5])), ValueError,
         r"ids must be an integer tensor"),
    Case("6-codebook-usage-unknown-codebook", lambda: _tokenizer().codebook_usage(_ids(), "prolog"), ValueError,
         r"codebook must be 'visual' or 'prologue'"),
    Case("6-codebook-usage-no-prologue",
         lambda: tiny_tokenizer(num_prologue_tokens=0).codebook_usage(torch.tensor([1]), "prologue"), ValueError,
         r"codebook='prologue'.*no prologue tokens"),
    Case("6-codebook-usage-empty", lambda: _tokenizer().codebook_usage(torch.zeros(0, dtype=torch.long)), ValueError,
         r"ids is empty"),
    Case("6-postprocess-nan", lambda: PrologueTokenizerModel.postprocess(torch.full((1, 3, 4, 4), float("nan")), "uint8"),
         ValueError, r"pixel_values has 48 NaN/Inf values"),
    Case("6-postprocess-uint8-input", lambda: PrologueTokenizerModel.postprocess(torch.zeros(1, 3, 4, 4, dtype=torch.uint8)),
         ValueError, r"pixel_values must be a float tensor \[B, C, H, W\]"),
    Case("6-postprocess-3d", lambda: PrologueTokenizerModel.postprocess(torch.zeros(3, 4, 4), "np"), ValueError,
         r"pixel_values must be a float tensor \[B, C, H, W\].*\[3, 4, 4\]"),
    Case("6-preprocess-float-tiff",
         lambda: PrologueTokenizerModel.preprocess(_image_file(np.full((8, 8), 0.8, np.float32), "TIFF")), ValueError,
         r"images: PIL mode 'F' \(32-bit float\) has no fixed value range"),
    Case("6-preprocess-int32-image", lambda: PrologueTokenizerModel.preprocess(PIL.Image.fromarray(np.zeros((8, 8), np.int32))),
         ValueError, r"images: PIL mode 'I' \(32-bit integer\)"),
    Case("6-from-pretrained-more-layers",
         lambda: PrologueTokenizerModel.from_pretrained(_copy(_saved_tokenizer(), "more", _edit_config(num_hidden_layers=3))),
         RuntimeError, r"do not match its config\.json \(num_hidden_layers=3.*missing \['encoder\.layers\.2\.\*'\].*strict=False"),
    Case("6-from-pretrained-fewer-layers",
         lambda: PrologueTokenizerModel.from_pretrained(
             _copy(_saved_tokenizer(), "fewer", _edit_config(decoder_num_hidden_layers=1))),
         RuntimeError, r"decoder_num_hidden_layers=1\).*unexpected \['decoder\.layers\.1\.\*'\]"),
    Case("6-ar-from-pretrained-more-layers",
         lambda: PrologueARForCausalLM.from_pretrained(_copy(_saved_ar(), "ar-more", _edit_config(num_hidden_layers=3))),
         RuntimeError, r"do not match its config\.json \(num_hidden_layers=3\).*missing \['model\.layers\.2\.\*'\]"),
    Case("6-post-from-pretrained-fewer-layers",
         lambda: ProloguePostModel.from_pretrained(_copy(_saved_post(), "post-fewer", _edit_config(num_hidden_layers=1))),
         RuntimeError, r"\(num_hidden_layers=1\).*unexpected \['.*layers\.1\.\*'\].*strict=False"),
    # item 9: decode dtypes and empty batches
    Case("9-decode-float-ids", lambda: _tokenizer().decode(_ids().float()), ValueError,
         r"visual_ids must be an integer tensor, got dtype torch\.float32"),
    Case("9-decode-bool-ids", lambda: _tokenizer().decode(_ids().bool()), ValueError,
         r"visual_ids must be an integer tensor, got dtype torch\.bool"),
    Case("9-decode-numpy-ids", lambda: _tokenizer().decode(_ids().numpy()), ValueError,
         r"visual_ids must be a torch tensor \[B, 16\], got ndarray"),
    Case("9-decode-empty-batch", lambda: _tokenizer().decode(torch.zeros(0, 16, dtype=torch.long)), ValueError,
         r"visual_ids is an empty batch"),
    Case("9-encode-empty-batch", lambda: _tokenizer().encode(torch.zeros(0, 3, 32, 32)), ValueError,
         r"pixel_values is empty \(shape \[0, 3, 32, 32\]\)"),
    Case("9-post-encode-empty-batch", lambda: _post().encode(torch.zeros(0, 3, 16, 16)), ValueError,
         r"pixel_values is empty"),
    Case("9-post-decode-empty-batch", lambda: _post().decode(torch.zeros(0, 16, dtype=torch.long)), ValueError,
         r"visual_ids is an empty batch"),
    Case("9-post-decode-bool-ids", lambda: _post().decode(torch.zeros(1, 16, dtype=torch.bool)), ValueError,
         r"visual_ids must be an integer tensor, got dtype torch\.bool"),
    # item 10: configs and folders
    Case("10-config-hidden-size-str", lambda: PrologueTokenizerConfig(hidden_size="64"), StrictDataclassFieldValidationError,
         r"field 'hidden_size'.*expected int, got str"),
    Case("10-config-image-size-float", lambda: PrologueTokenizerConfig(**{**TINY_TOKENIZER_KWARGS, "image_size": 32.0}),
         StrictDataclassFieldValidationError, r"field 'image_size'.*expected int, got float \(value: 32\.0\)"),
    Case("10-config-rope-axes-str", lambda: PrologueTokenizerConfig(rope_axes_dim="abc"), StrictDataclassFieldValidationError,
         r"field 'rope_axes_dim'.*doesn't match any type in \(list\[int\], tuple\[int, \.\.\.\]\)"),
    Case("10-config-bool-as-int", lambda: PrologueTokenizerConfig(num_hidden_layers=True),
         StrictDataclassFieldValidationError, r"field 'num_hidden_layers'.*expected int, got bool"),
    Case("10-config-theta-str", lambda: PrologueTokenizerConfig(patch_rope_theta="2000"),
         StrictDataclassFieldValidationError, r"field 'patch_rope_theta'"),
    Case("10-ar-config-hidden-size-str", lambda: PrologueARConfig(hidden_size="64"), StrictDataclassFieldValidationError,
         r"field 'hidden_size'.*expected int, got str"),
    Case("10-ar-config-num-classes-float", lambda: PrologueARConfig(num_classes=10.0), StrictDataclassFieldValidationError,
         r"field 'num_classes'.*expected int, got float"),
    Case("10-ar-config-rope-axes-str", lambda: PrologueARConfig(rope_axes_dim="abc"), StrictDataclassFieldValidationError,
         r"field 'rope_axes_dim'"),
    Case("10-post-config-hidden-size-str", lambda: ProloguePostConfig(hidden_size="64"), StrictDataclassFieldValidationError,
         r"field 'hidden_size'.*expected int, got str"),
    Case("10-config-json-hidden-size-str",
         lambda: PrologueTokenizerModel.from_pretrained(_copy(_saved_tokenizer(), "strsize", _edit_config(hidden_size="64"))),
         StrictDataclassFieldValidationError, r"field 'hidden_size'.*expected int, got str"),
    Case("10-deleted-config-json",
         lambda: PrologueTokenizerModel.from_pretrained(_copy(_saved_tokenizer(), "noconfig", _remove("config.json"))),
         FileNotFoundError, r"noconfig has no config\.json.*pass config=\.\.\. \(PrologueTokenizerConfig\)"),
    Case("10-pipeline-without-ar",
         lambda: ProloguePipeline.from_pretrained(_copy(_saved_pipeline(), "no_ar", _remove("ar"))), FileNotFoundError,
         r"pipeline folder .*no_ar has no ar/ subfolder.*pass ar=\.\.\."),
    Case("10-pipeline-without-tokenizer",
         lambda: ProloguePipeline.from_pretrained(_copy(_saved_pipeline(), "no_tok", _remove("tokenizer"))),
         FileNotFoundError, r"no_tok has no tokenizer/ subfolder"),
    Case("10-pipeline-tokenizer-without-config",
         lambda: ProloguePipeline.from_pretrained(_copy(_saved_pipeline(), "no_tok_cfg", _remove("tokenizer", "config.json"))),
         FileNotFoundError, r"no_tok_cfg/tokenizer has no config\.json"),
    Case("10-pipeline-id2label-str",
         lambda: ProloguePipeline(tokenizer=_pipeline().tokenizer, ar=_pipeline().ar, id2label="cat,dog"), ValueError,
         r"id2label must be a dict \{class id: name\} or a list of names, got str"),
    # already clear before the issue: shapes, labels, sampling settings, corrupt files
    Case("ok-encode-wrong-channels", lambda: _tokenizer().encode(torch.zeros(2, 1, 32, 32)), ValueError,
         r"pixel_values must have shape \[B, 3, 32, 32\]"),
    Case("ok-encode-wrong-size", lambda: _tokenizer().encode(torch.zeros(2, 3, 64, 64)), ValueError,
         r"pixel_values must have shape \[B, 3, 32, 32\].*\[2, 3, 64, 64\]"),
    Case("ok-encode-uint8", lambda: _tokenizer().encode(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)), ValueError,
         r"pixel_values must be a float tensor.*preprocess"),
    Case("ok-encode-3d", lambda: _tokenizer().encode(torch.zeros(3, 32, 32)), ValueError,
         r"pixel_values must be a tensor of shape \[B, 3, 32, 32\]"),
    Case("ok-post-encode-wrong-size", lambda: _post().encode(torch.zeros(1, 3, 32, 32)), ValueError,
         r"pixel_values must have shape \[B, 3, 16, 16\]"),
    Case("ok-decode-wrong-length", lambda: _tokenizer().decode(torch.zeros(2, 15, dtype=torch.long)), ValueError,
         r"visual_ids must have shape \[B, 16\]"),
    Case("ok-decode-ids-ge-V", lambda: _tokenizer().decode(torch.full((1, 16), 64)), ValueError, r"ids must lie in \[0, 64\)"),
    Case("ok-preprocess-float-tensor", lambda: PrologueTokenizerModel.preprocess(torch.zeros(1, 3, 4, 4)), ValueError,
         r"images must be uint8"),
    Case("ok-preprocess-mixed-sizes",
         lambda: PrologueTokenizerModel.preprocess([PIL.Image.new("RGB", (8, 8)), PIL.Image.new("RGB", (4, 4))]), ValueError,
         r"images must all have the same size"),
    Case("ok-preprocess-empty-list", lambda: PrologueTokenizerModel.preprocess([]), ValueError, r"images is an empty list"),
    Case("ok-postprocess-output-type", lambda: PrologueTokenizerModel.postprocess(torch.zeros(1, 3, 4, 4), "jpeg"),
         ValueError, r"output_type must be one of"),
    Case("ok-pipeline-label-too-large", lambda: _sample([11]), ValueError, r"class_labels must lie in \[0, 10\]"),
    Case("ok-pipeline-label-negative", lambda: _sample([-1]), ValueError, r"class_labels must lie in \[0, 10\]"),
    Case("ok-pipeline-unknown-label-name", lambda: _sample(["class 33"]), ValueError, r"unknown label name 'class 33'"),
    Case("ok-pipeline-empty-labels", lambda: _sample([]), ValueError, r"class_labels is empty"),
    Case("ok-generate-ids-label-too-large", lambda: generate_ids(_pipeline().ar, [11], generator=_generator()),
         ValueError, r"class_labels must lie in \[0, 10\)"),
    Case("ok-pipeline-prologue-ids-range", lambda: _sample([1], prologue_ids=torch.full((1, 4), 99)), ValueError,
         r"prologue_ids must lie in \[0, 16\)"),
    Case("ok-pipeline-num-images", lambda: _sample([1], num_images_per_label=0), ValueError,
         r"num_images_per_label must be an integer >= 1"),
    Case("ok-pipeline-output-type", lambda: _pipeline()([1], generator=_generator(), output_type="jpeg"), ValueError,
         r"output_type must be one of"),
    Case("ok-sampling-temperature-zero", lambda: SamplingParams(temperature=0.0), ValueError,
         r"temperature must be a finite number > 0"),
    Case("ok-sampling-top-k-negative", lambda: _sample([1], sampling={"top_k": -1}), ValueError, r"top_k must be an integer >= 0"),
    Case("ok-sampling-top-p-above-one", lambda: _sample([1], sampling={"top_p": 1.5}), ValueError, r"top_p must lie in \(0, 1\]"),
    Case("ok-sampling-unknown-field", lambda: _sample([1], sampling={"guidance_scale": 4.0}), ValueError,
         r"unknown SamplingParams fields \['guidance_scale'\]"),
    Case("ok-sampling-unknown-preset", lambda: _sample([1], sampling="nope"), ValueError, r"unknown sampling preset 'nope'"),
    Case("ok-config-indivisible-heads", lambda: PrologueTokenizerConfig(hidden_size=64), ValueError,
         r"hidden_size \(64\) must be divisible by num_attention_heads \(12\)"),
    Case("ok-from-pretrained-codebook-resized",
         lambda: PrologueTokenizerModel.from_pretrained(_copy(_saved_tokenizer(), "v32", _edit_config(visual_codebook_size=32))),
         RuntimeError, r"ignore_mismatched_sizes"),
    Case("ok-from-pretrained-truncated-weights",
         lambda: PrologueTokenizerModel.from_pretrained(_copy(_saved_tokenizer(), "trunc", _truncate_weights)), OSError,
         r"a weights file in .*trunc is truncated or corrupt"),
    Case("ok-truncated-png", lambda: PrologueTokenizerModel.preprocess(_image_file(np.zeros((32, 32, 3), np.uint8), "PNG", True)),
         OSError, r"image file is truncated"),
    Case("ok-not-an-image", lambda: PIL.Image.open(io.BytesIO(b"not an image")), PIL.UnidentifiedImageError,
         r"cannot identify image file"),
    # items 2 and 3: checkpoints and output folders (the fault injection itself: tests/test_checkpoint_safety.py)
    Case("2-resume-from-a-checkpoint-without-its-ema",
         lambda: _stage2_trainer("ema-run", ema_halflife_steps=50).train(
             resume_from_checkpoint=_stage2_checkpoint("ema-run/c", tokenizer_identity(_tokenizer()), ema=False)),
         ValueError, r"resume_from_checkpoint=.*ema-run/c.* is incomplete \(no weights in ema/\)"),
    Case("3-fresh-run-into-a-folder-with-checkpoints",
         lambda: _stage2_trainer("old-run", checkpoints=("checkpoint-2", "checkpoint-4")).train(), ValueError,
         r"output_dir .*old-run holds a previous run \(checkpoint-2, checkpoint-4\).*--overwrite_output_dir"),
    Case("3-fresh-run-into-a-finished-run", lambda: _stage2_trainer("done-run", checkpoints=("model.safetensors",)).train(),
         ValueError, r"output_dir .*done-run holds a previous run \(model.safetensors\)"),
    # item 4: tokenizer identity
    Case("4-stage2-resume-on-another-tokenizers-ids", _resume_stage2_on_other_ids, ValueError,
         r"checkpoint-4 was trained on the ids of tokenizer sha256:\w+, but this run's tokenizer is sha256:\w+"
         r".*--ignore_tokenizer_identity"),
    Case("4-pipeline-with-another-tokenizer",
         lambda: ProloguePipeline(tiny_tokenizer(seed=1), tiny_ar(tokenizer_identity=tokenizer_identity(_tokenizer()))),
         ValueError, r"tokenizer identity mismatch: the AR was trained on the ids of tokenizer sha256:\w+, the given "
         r"tokenizer is sha256:\w+.*verify_tokenizer_identity=False"),
    Case("4-pipeline-from-pretrained-with-another-tokenizer",
         lambda: ProloguePipeline.from_pretrained(_mismatched_pipeline_folder()), ValueError,
         r"tokenizer identity mismatch.*verify_tokenizer_identity=False"),
    # item 8: pretokenize
    Case("8-pretokenize-nothing-decodable", lambda: _pretokenize_undecodable("undecodable"), ValueError,
         r"all 3 source images were undecodable \(skipped\)"),
]


def test_case_ids_are_unique():
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_with_an_error_naming_it(case):
    with pytest.raises(case.error) as raised:
        case.call()
    assert re.search(case.match, str(raised.value), re.DOTALL), str(raised.value)


# ------------------------------------------------------------------------------------------------ pickle payloads
class _Payload:
    """Unpickling this would create ``path``: the stand-in for arbitrary code in a checkpoint."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_payload_in_pytorch_model_bin_is_refused_and_never_runs(tmp_path):
    folder = tmp_path / "evil"
    shutil.copytree(_saved_tokenizer(), folder)
    os.remove(folder / "model.safetensors")
    marker = tmp_path / "payload_ran"
    torch.save({"encoder.input_layer.weight": _Payload(str(marker))}, folder / "pytorch_model.bin")
    with pytest.raises(Exception, match=r"Weights only load failed") as raised:
        PrologueTokenizerModel.from_pretrained(folder)
    assert type(raised.value).__name__ == "UnpicklingError"
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ what is accepted
@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8, torch.int32, torch.int8])
def test_decode_accepts_any_integer_id_dtype(dtype):
    ids = torch.tensor([[0, 5, 63, 17] * 4, [1, 2, 3, 4] * 4]).clamp(max=torch.iinfo(dtype).max)
    expected = _tokenizer().decode(ids).pixel_values
    assert torch.equal(_tokenizer().decode(ids.to(dtype)).pixel_values, expected)
    assert torch.equal(_post().decode(ids.to(dtype).clamp(max=31)).pixel_values, _post().decode(ids.clamp(max=31)).pixel_values)


def test_encode_casts_other_float_dtypes_to_the_model_dtype():
    x = _images()
    reference = _tokenizer().encode(x)
    assert torch.equal(_tokenizer().encode(x.double()).visual_ids, reference.visual_ids)
    assert torch.equal(_tokenizer().encode(x.double()).prologue_ids, reference.prologue_ids)
    half = x.half()
    assert torch.equal(_tokenizer().encode(half).visual_ids, _tokenizer().encode(half.float()).visual_ids)


def test_resampling_overshoot_is_accepted_and_just_beyond_the_tolerance_is_not():
    step = torch.full((1, 3, 16, 16), -1.0)
    step[..., 8:] = 1.0
    upsampled = F.interpolate(step, scale_factor=2, mode="bicubic")  # [1, 3, 32, 32], overshoots a sharp edge
    assert float(upsampled.max()) > 1.2
    _tokenizer().encode(upsampled)  # accepted
    _tokenizer().encode(torch.full((1, 3, 32, 32), 1.0 + PIXEL_RANGE_TOLERANCE))
    with pytest.raises(ValueError, match=r"got values in \[1\.26, 1\.26\]"):
        _tokenizer().encode(torch.full((1, 3, 32, 32), 1.26))


def test_an_all_0_1_batch_is_encoded_with_a_warning():
    x = _images() * 0.5 + 0.5
    with CaptureLogger(logging.get_logger("prologue_hf.models.modeling_prologue_tokenizer")) as captured:
        ids = _tokenizer().encode(x).visual_ids
    assert "x * 2 - 1" in captured.out
    assert torch.equal(ids, _tokenizer().encode(x.clone()).visual_ids)


def test_preprocess_scales_16_bit_images_from_65535():
    gray = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    image = _image_file(gray, "PNG")
    assert image.mode == "I;16"
    pixels = PrologueTokenizerModel.preprocess([image, PIL.Image.fromarray(np.full((2, 2, 3), 255, np.uint8))])
    expected = torch.from_numpy(gray.astype(np.float32)) / 32767.5 - 1.0
    assert pixels.shape == (2, 3, 2, 2)
    for channel in range(3):
        assert torch.equal(pixels[0, channel], expected)
    assert torch.equal(pixels[1], torch.ones(3, 2, 2))
    assert float(pixels[0, 0, 1, 1]) == 1.0 and float(pixels[0, 0, 0, 0]) == -1.0


def test_strict_false_loads_a_changed_layer_count_as_transformers_does():
    folder = _copy(_saved_tokenizer(), "lenient", _edit_config(num_hidden_layers=3))
    model, info = PrologueTokenizerModel.from_pretrained(folder, strict=False, output_loading_info=True)
    assert model.config.num_hidden_layers == 3 and len(model.encoder.layers) == 3
    assert sorted(info["missing_keys"])[0].startswith("encoder.layers.2.")
    saved = _tokenizer().state_dict()
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items() if key in saved)


def test_strict_loading_lets_a_base_ar_drop_the_head_of_a_causal_lm_folder():
    base = PrologueARModel.from_pretrained(_saved_ar())
    full = PrologueARForCausalLM.from_pretrained(_saved_ar())
    assert all(torch.equal(value, full.model.state_dict()[key]) for key, value in base.state_dict().items())
    lenient = PrologueARForCausalLM.from_pretrained(
        _copy(_saved_ar(), "ar-lenient", _edit_config(num_hidden_layers=3)), strict=False
    )
    assert len(lenient.model.layers) == 3


def test_output_loading_info_is_kept_for_a_complete_checkpoint():
    model, info = PrologueTokenizerModel.from_pretrained(_saved_tokenizer(), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert all(torch.equal(value, _tokenizer().state_dict()[key]) for key, value in model.state_dict().items())


def test_a_component_passed_by_keyword_needs_no_subfolder():
    folder = _copy(_saved_pipeline(), "ar_given", _remove("ar"))
    pipe = ProloguePipeline.from_pretrained(folder, ar=_pipeline().ar)
    assert pipe.ar is _pipeline().ar


@pytest.mark.parametrize("config_class", [PrologueTokenizerConfig, PrologueARConfig, ProloguePostConfig])
def test_id2label_as_a_list_becomes_a_dict(config_class):
    assert config_class(id2label=["cat", "dog"]).id2label == {0: "cat", 1: "dog"}


def test_pipeline_id2label_as_a_list_names_the_classes(tmp_path):
    names = [f"name {i}" for i in range(10)]
    pipe = ProloguePipeline(tokenizer=_pipeline().tokenizer, ar=_pipeline().ar, id2label=names)
    assert pipe.get_label_ids(["name 3", "NAME 7"]) == [3, 7]
    folder = tmp_path / "listed"
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["id2label"] = names  # a hand-written model_index.json with a list
    (folder / "model_index.json").write_text(json.dumps(index))
    assert ProloguePipeline.from_pretrained(folder).get_label_ids("name 4") == [4]


def test_real_valued_config_fields_take_ints_and_store_floats():
    written_as_int = PrologueTokenizerConfig(patch_rope_theta=2000, dropout=0, layer_scale_init=1)
    written_as_float = PrologueTokenizerConfig(patch_rope_theta=2000.0, dropout=0.0, layer_scale_init=1.0)
    assert isinstance(written_as_int.patch_rope_theta, float) and isinstance(written_as_int.dropout, float)
    assert written_as_int.to_json_string() == written_as_float.to_json_string()
    assert isinstance(PrologueARConfig(embedding_dropout=0).embedding_dropout, float)
    assert isinstance(ProloguePostConfig(prologue_temperature=1).prologue_temperature, float)


def test_the_accelerator_path_of_the_pixel_check_is_the_same_rule():
    """Off the CPU, encode queues a device-side assertion instead of reading the extremes on the host; on CPU
    tensors that assertion raises at once, so its rule is checked here against the host path's."""
    good = _images()
    check_pixel_range(good, synchronize=False)
    check_pixel_range(torch.full((1, 3, 2, 2), -1.0 - PIXEL_RANGE_TOLERANCE), synchronize=False)
    for bad in (good * 127.5 + 127.5, good.index_fill(0, torch.tensor([0]), float("nan")), torch.full((1, 1), 1.26)):
        with pytest.raises(ValueError):
            check_pixel_range(bad)
        with pytest.raises(RuntimeError, match=r"pixel_values must be finite and lie in \[-1, 1\] \(\+-0\.25\)"):
            check_pixel_range(bad, synchronize=False)
