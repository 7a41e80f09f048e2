"""The interactive web demo behind ``make app`` (``examples/app.py``): plain functions over a
:class:`~prologue_hf.ProloguePipeline`, and the Gradio Blocks built from them.

The functions take a pipeline and user input and return images (uint8 / PIL), ids and messages; they know nothing
about Gradio, so the tests call them directly. Bad input raises :class:`AppInputError` (a ``ValueError``) with a
message meant for the person at the browser; :func:`build_app` turns it into a ``gr.Error`` toast.

* :func:`resample_all`: new prologue *and* visual tokens for a class (the paper's free sampling).
* :func:`resample_visual`: the visual tokens redrawn under given prologue ids (paper Fig. 1: same layout, new
  details); the ids come from the last draw or are typed / pasted, one line per image.
* :func:`encode_image` + :func:`image_variations`: an uploaded image through the tokenizer (reconstruction, its
  prologue ids), then visual tokens resampled under *that image's* prologue and a chosen class.
* :func:`prologue_attention`: where the visual tokens of a generated image attend to each prologue token
  (:func:`~prologue_hf.research.analysis.prologue_heatmaps`, paper Fig. 7).

Gradio is imported only inside :func:`build_app` and its helpers (it is the ``demo`` extra, not a library
dependency).
"""

from __future__ import annotations

import functools
import math
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import torch

from ..evaluation.reconstruction import psnr
from ..pipelines import SAMPLING_PRESETS, GuidanceSchedule, ProloguePipeline, SamplingParams
from .analysis import attention_maps, plot_prologue_heatmaps, prologue_heatmaps

if TYPE_CHECKING:  # the demo extra; imported at run time only inside build_app
    import fastapi
    import gradio

#: preset-menu entries besides the Table A5 names of :data:`~prologue_hf.pipelines.SAMPLING_PRESETS`
PIPELINE_DEFAULT = "pipeline default"
CUSTOM = "custom (controls below)"
#: class-menu entry for the null class (unconditional samples)
UNCONDITIONAL = "(unconditional)"
#: the schedule menu (GuidanceSchedule's schedules; tests check that each one is accepted)
SCHEDULE_CHOICES = ("constant", "linear", "cosine")
#: the most images one button press may ask for (a CPU draws them one batch at a time)
MAX_IMAGES = 16
#: per-segment sampling controls, in the order :func:`build_app` lays them out and passes them
CONTROL_NAMES = (
    "prologue_scale",
    "prologue_schedule",
    "prologue_power",
    "visual_scale",
    "visual_schedule",
    "visual_power",
    "prologue_temperature",
    "temperature",
    "top_k",
    "top_p",
)

#: ``progress(done, total)`` after every sampling step
ProgressFn = Callable[[int, int], None]


class AppInputError(ValueError):
    """Input the app cannot use; the message says which control and what it expects."""


@dataclass
class Draw:
    """One press of a sampling button.

    Args:
        class_id: the class every image was drawn for (``num_classes`` = unconditional).
        class_name: its name as shown in the class menu.
        images: uint8 ``[n, H, W, C]``.
        prologue_ids: ``[n, K]`` raw prologue ids (``None`` when the AR has no prologue tokens).
        visual_ids: ``[n, N]`` raw visual ids.
        seed: the seed of the draw.
        sampling: the sampling settings' name (a preset, ``"pipeline default"`` or ``"custom"``).
        seconds: wall time of the pipeline call.
    """

    class_id: int
    class_name: str
    images: np.ndarray
    prologue_ids: torch.LongTensor | None
    visual_ids: torch.LongTensor
    seed: int
    sampling: str
    seconds: float

    def pil_images(self) -> list[PIL.Image.Image]:
        return to_pil(self.images)


@dataclass
class EncodedImage:
    """An uploaded image through the tokenizer.

    Args:
        image: the image the tokenizer saw (RGB / L at the tokenizer's size), PIL.
        reconstruction: the tokenizer's decoding of its visual ids, PIL.
        prologue_ids: ``[1, K]`` (``None`` without prologue tokens).
        visual_ids: ``[1, N]``.
        original_size: ``(width, height)`` of the upload.
        psnr: PSNR (dB) of the reconstruction against ``image``.
    """

    image: PIL.Image.Image
    reconstruction: PIL.Image.Image
    prologue_ids: torch.LongTensor | None
    visual_ids: torch.LongTensor
    original_size: tuple[int, int]
    psnr: float

    @property
    def resized(self) -> bool:
        return self.original_size != self.image.size

    def message(self) -> str:
        size = f"{self.image.size[0]}x{self.image.size[1]}"
        note = (
            f"resized from {self.original_size[0]}x{self.original_size[1]} to {size} (center crop to a square, then "
            "bicubic)"
            if self.resized
            else f"{size}, the tokenizer's size"
        )
        return f"Encoded the upload ({note}); reconstruction PSNR {self.psnr:.2f} dB."


# --------------------------------------------------------------------------------------------- loading
def load_pipeline(name_or_path: str | Path, device: str = "auto") -> ProloguePipeline:
    """A :class:`~prologue_hf.ProloguePipeline` folder (what ``make demo`` writes, or a converted official
    checkpoint) or a Hub id already in the local cache, on ``device`` (``"auto"``: CUDA when there is one)."""
    path = Path(name_or_path)
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"--pipeline {str(name_or_path)!r} is a folder but not a ProloguePipeline: no model_index.json"
        )
    try:
        pipeline = ProloguePipeline.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as error:
        if path.is_dir():
            raise
        raise FileNotFoundError(
            f"--pipeline {str(name_or_path)!r}: no such folder, and as a Hub id it could not be loaded ({error}). "
            "`make demo` writes demo_out/pipeline; a Hub id must already be in the local cache (offline)."
        ) from error
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    pipeline.to(device)
    # the server feeds a browser progress bar; one console bar per request would only clutter its log
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def describe_pipeline(pipeline: ProloguePipeline) -> str:
    """One line: image size, tokens, classes, device."""
    vocab = pipeline.ar.config.vocabulary
    size = pipeline.tokenizer.config.image_size
    return (
        f"{size}x{size} images; {vocab.num_prologue_tokens} prologue + {vocab.num_visual_tokens} visual tokens; "
        f"{pipeline.num_classes} classes; {type(pipeline.tokenizer).__name__}; device {pipeline.device}"
    )


# --------------------------------------------------------------------------------------------- classes
def class_names(pipeline: ProloguePipeline) -> list[str]:
    """The class menu: the pipeline's ``id2label`` names in id order (ids as text when it has none), then
    :data:`UNCONDITIONAL`."""
    id2label = pipeline.config.id2label or {}
    names = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(pipeline.num_classes)]
    return names + [UNCONDITIONAL]


def resolve_class(pipeline: ProloguePipeline, value: str | int | None) -> tuple[int, str]:
    """A class-menu entry, a typed name (any comma-separated synonym, any case) or a class id -> ``(id, name)``.

    >>> from prologue_hf.testing import tiny_pipeline
    >>> resolve_class(tiny_pipeline(), "Class 3")
    (3, 'class 3')
    """
    names = class_names(pipeline)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise AppInputError("class: choose a class from the menu (or type its name)")
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        index = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        index = int(value.strip())
    elif isinstance(value, str):
        text = value.strip()
        if text in names:
            return names.index(text), text
        if text.lower() == UNCONDITIONAL.strip("()"):
            return pipeline.num_classes, UNCONDITIONAL
        try:
            index = pipeline.get_label_ids(text)[0]
        except ValueError as error:
            raise AppInputError(f"class: {error}") from None
    else:
        raise AppInputError(f"class: expected a class name or id, got {value!r}")
    if not 0 <= index <= pipeline.num_classes:
        raise AppInputError(
            f"class: id {index} is outside [0, {pipeline.num_classes}] ({pipeline.num_classes} = unconditional)"
        )
    return index, names[index]


# --------------------------------------------------------------------------------------------- sampling settings
def preset_names() -> list[str]:
    """The preset menu: :data:`PIPELINE_DEFAULT`, :data:`CUSTOM`, then every Table A5 preset."""
    return [PIPELINE_DEFAULT, CUSTOM, *SAMPLING_PRESETS]


def default_sampling(pipeline: ProloguePipeline) -> SamplingParams:
    """The settings the pipeline samples with when none are given (its ``default_sampling``)."""
    value = pipeline.config.default_sampling
    if value is None:
        return SamplingParams()
    return SamplingParams.from_preset(value) if isinstance(value, str) else SamplingParams.from_dict(value)


def sampling_controls(params: SamplingParams) -> dict[str, float | int | str]:
    """``params`` as the values of the per-segment controls (:data:`CONTROL_NAMES`), so that choosing a preset shows
    what it does and is a starting point for "custom".

    The controls are segmented-mode: a global-mode schedule (the baselines without prologue) is shown on the visual
    controls, which is the same schedule when K = 0. A segment without guidance shows scale 0 (= off).

    >>> sampling_controls(SamplingParams.from_preset("prologue-B-B"))["visual_power"]
    0.2
    """
    prologue = params.prologue_guidance if params.segmented else None
    visual = params.visual_guidance if params.segmented else params.guidance
    off = GuidanceSchedule(0.0)
    prologue, visual = prologue or off, visual or off
    return {
        "prologue_scale": prologue.scale,
        "prologue_schedule": prologue.schedule,
        "prologue_power": prologue.power,
        "visual_scale": visual.scale,
        "visual_schedule": visual.schedule,
        "visual_power": visual.power,
        "prologue_temperature": (
            params.temperature if params.prologue_temperature is None else params.prologue_temperature
        ),
        "temperature": params.temperature,
        "top_k": params.top_k,
        "top_p": params.top_p,
    }


def sampling_from_controls(preset: str, controls: dict | None = None) -> SamplingParams | None:
    """The preset menu and the per-segment controls -> what the pipeline samples with (``None`` = its default).

    With :data:`CUSTOM` the controls are read: the prologue segment gets ``prologue_*`` and the prologue
    temperature, the EOS + visual segment ``visual_*`` and the temperature; scale 0 switches a segment's guidance off;
    top-k (0 = off) and top-p (1 = off) apply to every step. Otherwise the controls are ignored.

    >>> sampling_from_controls("prologue-B-B").visual_guidance.scale
    3.75
    """
    if preset in (None, "", PIPELINE_DEFAULT):
        return None
    if preset != CUSTOM:
        try:
            return SamplingParams.from_preset(preset)
        except ValueError as error:
            raise AppInputError(f"preset: {error}") from None
    controls = dict(controls or {})
    missing = [name for name in CONTROL_NAMES if controls.get(name) is None]
    if missing:
        raise AppInputError(f"custom sampling needs every control; missing {missing}")
    top_k = controls["top_k"]
    if isinstance(top_k, float) and not top_k.is_integer():
        raise AppInputError(f"top-k must be a whole number (0 = off), got {top_k}")
    try:
        return SamplingParams(
            prologue_guidance=GuidanceSchedule(
                float(controls["prologue_scale"]), controls["prologue_schedule"], float(controls["prologue_power"])
            ),
            visual_guidance=GuidanceSchedule(
                float(controls["visual_scale"]), controls["visual_schedule"], float(controls["visual_power"])
            ),
            temperature=float(controls["temperature"]),
            prologue_temperature=float(controls["prologue_temperature"]),
            top_k=int(top_k),
            top_p=float(controls["top_p"]),
        )
    except ValueError as error:
        raise AppInputError(f"custom sampling: {error}") from None


def _sampling_name(preset: str | None) -> str:
    return "custom" if preset == CUSTOM else (preset or PIPELINE_DEFAULT)


# --------------------------------------------------------------------------------------------- prologue ids as text
def format_prologue_ids(prologue_ids: torch.Tensor | None) -> str:
    """``[n, K]`` ids -> one line of space-separated ids per image (what the prologue-ids box shows)."""
    if prologue_ids is None:
        return ""
    rows = torch.as_tensor(prologue_ids).reshape(len(prologue_ids), -1)
    return "\n".join(" ".join(str(int(i)) for i in row) for row in rows)


def parse_prologue_ids(text: str | None, pipeline: ProloguePipeline) -> torch.LongTensor:
    """The prologue-ids box -> ``[n, K]``: one line per image, ``K`` integers in ``[0, P)`` each (separated by spaces
    or commas; brackets are ignored, so a pasted Python list works).

    >>> from prologue_hf.testing import tiny_pipeline
    >>> parse_prologue_ids("1 2 3 4\\n[5, 6, 7, 8]", tiny_pipeline()).tolist()
    [[1, 2, 3, 4], [5, 6, 7, 8]]
    """
    vocab = pipeline.ar.config.vocabulary
    k, size = vocab.num_prologue_tokens, vocab.prologue_vocab_size
    if k == 0:
        raise AppInputError("this pipeline's AR has no prologue tokens (K = 0): there is nothing to keep")
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if not lines:
        raise AppInputError("prologue ids: none given; press Resample all first, or paste K ids per line")
    rows = []
    for number, line in enumerate(lines, start=1):
        if re.search(r"[^\d\s,\[\]\-]", line):
            raise AppInputError(
                f"prologue ids, line {number}: only integers, spaces and commas are allowed, got {line!r}"
            )
        values = [int(v) for v in re.findall(r"-?\d+", line)]
        if len(values) != k:
            raise AppInputError(f"prologue ids, line {number}: expected {k} ids, got {len(values)}")
        bad = [v for v in values if not 0 <= v < size]
        if bad:
            raise AppInputError(f"prologue ids, line {number}: ids must lie in [0, {size}), got {bad}")
        rows.append(values)
    if len(rows) > MAX_IMAGES:
        raise AppInputError(f"prologue ids: at most {MAX_IMAGES} lines (one image each), got {len(rows)}")
    return torch.tensor(rows, dtype=torch.long)


# --------------------------------------------------------------------------------------------- sampling
def _check_count(num_images: int | float) -> int:
    if isinstance(num_images, bool) or not isinstance(num_images, (int, float)) or not float(num_images).is_integer():
        raise AppInputError(f"number of images must be a whole number, got {num_images!r}")
    if not 1 <= int(num_images) <= MAX_IMAGES:
        raise AppInputError(f"number of images must lie in [1, {MAX_IMAGES}], got {int(num_images)}")
    return int(num_images)


def check_seed(seed: int | float) -> int:
    """A seed from a number box: a whole number in ``[0, 2**63)``."""
    whole = not isinstance(seed, bool) and isinstance(seed, (int, float)) and math.isfinite(seed)
    if not (whole and float(seed).is_integer()):
        raise AppInputError(f"seed must be a whole number, got {seed!r}")
    if not 0 <= int(seed) < 2**63:
        raise AppInputError(f"seed must lie in [0, 2**63), got {int(seed)}")
    return int(seed)


def _draw(
    pipeline: ProloguePipeline,
    class_value: str | int,
    num_images: int,
    seed: int,
    preset: str | None,
    controls: dict | None,
    prologue_ids: torch.LongTensor | None,
    progress: ProgressFn | None,
) -> Draw:
    class_id, name = resolve_class(pipeline, class_value)
    seed = check_seed(seed)
    sampling = sampling_from_controls(preset, controls)
    total = pipeline.ar.config.vocabulary.num_generated_tokens

    def on_step(step: int, ids: torch.Tensor) -> None:
        progress(step + 1, total)

    start = time.perf_counter()
    out = pipeline(
        [class_id],
        num_images_per_label=num_images,
        generator=torch.Generator().manual_seed(seed),
        sampling=sampling,
        prologue_ids=prologue_ids,
        output_type="uint8",
        return_ids=True,
        callback=on_step if progress is not None else None,
    )
    seconds = time.perf_counter() - start
    images = out.images.permute(0, 2, 3, 1).cpu().numpy()
    return Draw(
        class_id=class_id,
        class_name=name,
        images=images,
        prologue_ids=None if out.prologue_ids is None else out.prologue_ids.cpu(),
        visual_ids=out.visual_ids.cpu(),
        seed=seed,
        sampling=_sampling_name(preset),
        seconds=seconds,
    )


def resample_all(
    pipeline: ProloguePipeline,
    class_value: str | int,
    num_images: int,
    seed: int,
    preset: str | None = PIPELINE_DEFAULT,
    controls: dict | None = None,
    progress: ProgressFn | None = None,
) -> Draw:
    """``num_images`` images of one class with new prologue and visual tokens, seeded by ``seed``."""
    return _draw(pipeline, class_value, _check_count(num_images), seed, preset, controls, None, progress)


def resample_visual(
    pipeline: ProloguePipeline,
    class_value: str | int,
    prologue_ids: str | torch.Tensor | None,
    num_images: int,
    seed: int,
    preset: str | None = PIPELINE_DEFAULT,
    controls: dict | None = None,
    progress: ProgressFn | None = None,
) -> Draw:
    """Images whose visual tokens are redrawn under fixed prologue ids (paper Fig. 1).

    ``prologue_ids``: the prologue-ids box (text, see :func:`parse_prologue_ids`) or a tensor ``[n, K]`` / ``[K]``.
    One row: ``num_images`` images share it; ``n`` rows: one image per row (``num_images`` is ignored).
    """
    if isinstance(prologue_ids, torch.Tensor):
        ids = prologue_ids.reshape(-1, prologue_ids.shape[-1]).long().cpu()
        text = format_prologue_ids(ids)
        ids = parse_prologue_ids(text, pipeline)  # one check for typed and passed ids
    else:
        ids = parse_prologue_ids(prologue_ids, pipeline)
    count = _check_count(num_images) if ids.shape[0] == 1 else ids.shape[0]
    return _draw(pipeline, class_value, count, seed, preset, controls, ids, progress)


# --------------------------------------------------------------------------------------------- uploads
def fit_image(image: PIL.Image.Image | np.ndarray, size: int, channels: int = 3) -> PIL.Image.Image:
    """Any image -> ``size`` x ``size`` in the tokenizer's mode (RGB or L): the largest centered square, resized
    bicubically. An image of the right size is only converted."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise AppInputError(f"image: expected uint8 pixels, got {image.dtype}")
        image = PIL.Image.fromarray(image)
    if not isinstance(image, PIL.Image.Image):
        raise AppInputError(f"image: expected an image, got {type(image).__name__}")
    if channels not in (1, 3):
        raise AppInputError(f"the tokenizer takes {channels}-channel images; the app handles 1 (L) or 3 (RGB)")
    image = image.convert("RGB" if channels == 3 else "L")
    width, height = image.size
    if (width, height) == (size, size):
        return image
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), PIL.Image.Resampling.BICUBIC)


@torch.no_grad()
def encode_image(pipeline: ProloguePipeline, image: PIL.Image.Image | np.ndarray | None) -> EncodedImage:
    """An uploaded image (any size: see :func:`fit_image`) -> the tokenizer's reconstruction and ids."""
    if image is None:
        raise AppInputError("image: upload an image first")
    original_size = image.size if isinstance(image, PIL.Image.Image) else (image.shape[1], image.shape[0])
    tokenizer = pipeline.tokenizer
    config = tokenizer.config
    fitted = fit_image(image, config.image_size, config.num_channels)
    array = np.array(fitted)  # a writable copy: torch.from_numpy warns on PIL's read-only buffer
    if array.ndim == 2:
        array = array[:, :, None]
    pixels = tokenizer.preprocess(array).to(device=tokenizer.device, dtype=tokenizer.dtype)  # [1, C, S, S]
    encoded = tokenizer.encode(pixels)
    reconstruction = tokenizer.postprocess(tokenizer.decode(encoded.visual_ids).pixel_values, "uint8").cpu()
    original = torch.from_numpy(array).permute(2, 0, 1)[None]
    return EncodedImage(
        image=fitted,
        reconstruction=to_pil(reconstruction.permute(0, 2, 3, 1).numpy())[0],
        prologue_ids=None if encoded.prologue_ids is None else encoded.prologue_ids.cpu(),
        visual_ids=encoded.visual_ids.cpu(),
        original_size=tuple(original_size),
        psnr=float(psnr(reconstruction, original)[0]),
    )


def image_variations(
    pipeline: ProloguePipeline,
    encoded: EncodedImage | None,
    class_value: str | int,
    num_images: int,
    seed: int,
    preset: str | None = PIPELINE_DEFAULT,
    controls: dict | None = None,
    progress: ProgressFn | None = None,
) -> Draw:
    """Visual tokens resampled under the uploaded image's prologue ids and the chosen class."""
    if encoded is None:
        raise AppInputError("variations: upload an image first")
    if encoded.prologue_ids is None:
        raise AppInputError("variations need prologue tokens; this pipeline's tokenizer has none (K = 0)")
    return resample_visual(pipeline, class_value, encoded.prologue_ids, num_images, seed, preset, controls, progress)


# --------------------------------------------------------------------------------------------- attention
@torch.no_grad()
def prologue_attention(pipeline: ProloguePipeline, draw: Draw | None, index: int) -> PIL.Image.Image:
    """Where the visual tokens of image ``index`` of ``draw`` read each prologue token: the AR's attention from every
    visual token to prologue token ``k``, averaged over heads and the last 8 layers, on the visual grid, drawn over
    the image (one panel per prologue token; each panel has its own color scale)."""
    if draw is None:
        raise AppInputError("attention: draw images first (Resample all or Resample visual)")
    if draw.prologue_ids is None:
        raise AppInputError("attention to the prologue needs prologue tokens; this pipeline has none (K = 0)")
    count = draw.images.shape[0]
    if isinstance(index, bool) or not isinstance(index, (int, float)) or not float(index).is_integer():
        raise AppInputError(f"image index must be a whole number, got {index!r}")
    index = int(index)
    if not 0 <= index < count:
        raise AppInputError(
            f"image index must lie in [0, {count}) (the last draw has {count} images), got {index}"
        )
    ar = pipeline.ar
    vocab = ar.config.vocabulary
    input_ids = vocab.build_sequence(
        [draw.class_id], draw.visual_ids[index : index + 1], draw.prologue_ids[index : index + 1]
    )
    try:
        heatmaps = prologue_heatmaps(attention_maps(ar, input_ids.to(ar.device)), vocab)  # [K, g, g]
    except ValueError as error:  # a 1D tokenizer has no visual grid
        raise AppInputError(f"attention: {error}") from None
    image = draw.images[index]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    k = heatmaps.shape[0]
    with tempfile.TemporaryDirectory() as folder:
        path = plot_prologue_heatmaps(
            heatmaps,
            Path(folder) / "attention.png",
            image=image,
            columns=8 if k <= 32 else 16,
            title=f"image #{index}",
        )
        with PIL.Image.open(path) as figure:
            return figure.convert("RGB")


# --------------------------------------------------------------------------------------------- display helpers
def to_pil(images: np.ndarray) -> list[PIL.Image.Image]:
    """uint8 ``[n, H, W, C]`` -> PIL images (C = 1 becomes mode L)."""
    return [PIL.Image.fromarray(img[:, :, 0] if img.shape[-1] == 1 else img) for img in np.asarray(images)]


def draw_message(draw: Draw, kept_prologue: bool) -> str:
    what = "visual tokens redrawn under the given prologue" if kept_prologue else "new prologue and visual tokens"
    per_image = draw.seconds / max(1, draw.images.shape[0])
    return (
        f"{draw.images.shape[0]} image(s) of **{draw.class_name}** (class {draw.class_id}): {what}; seed {draw.seed}, "
        f"sampling {draw.sampling}; {draw.seconds:.2f} s ({per_image:.2f} s per image)."
    )


def gallery_items(draw: Draw) -> list[tuple[PIL.Image.Image, str]]:
    return [(image, f"#{i}") for i, image in enumerate(draw.pil_images())]


# --------------------------------------------------------------------------------------------- the Gradio app
# small images (32px for the demo pipeline) are shown enlarged with sharp pixels instead of a blur
APP_CSS = """
#gallery img, #variations img, #reconstruction img, #upload img { image-rendering: pixelated; }
#reconstruction img, #upload img { width: 100%; height: 100%; object-fit: contain; }
"""


def _failing_as_message(fn: Callable) -> Callable:
    """Bad input -> a gr.Error toast with the message (the server keeps running)."""
    import gradio as gr

    @functools.wraps(fn)  # gradio reads the signature (the `progress` default) through __wrapped__
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AppInputError as error:
            raise gr.Error(str(error)) from None

    return wrapped


def _progress_fn(progress) -> ProgressFn:
    return lambda done, total: progress((done, total), desc="sampling tokens", unit="tokens")


def _handler_controls(handler_locals: dict) -> dict:
    # the sampling controls among a handler's parameters, which must be spelled out (see the handlers)
    return {name: handler_locals[name] for name in CONTROL_NAMES}


def _draw_outputs(draw: Draw, kept_prologue: bool) -> tuple:
    # gallery, prologue ids, message, draw state, next seed, selected image: the outputs of both resample buttons
    return (
        gallery_items(draw), format_prologue_ids(draw.prologue_ids), draw_message(draw, kept_prologue), draw,
        draw.seed + 1, 0,
    )


def _guidance_row(start_controls: dict, segment: str) -> tuple:
    # one segment's guidance schedule (scale, schedule, power) as a row of controls
    import gradio as gr

    with gr.Row():
        return (
            gr.Number(start_controls[f"{segment}_scale"], label=f"{segment} guidance scale (0 = off)"),
            gr.Dropdown(
                list(SCHEDULE_CHOICES), value=start_controls[f"{segment}_schedule"], label=f"{segment} schedule"
            ),
            gr.Number(start_controls[f"{segment}_power"], label=f"{segment} cosine power"),
        )


def _sampling_panel(ui: SimpleNamespace, pipeline: ProloguePipeline, has_prologue: bool) -> None:
    """The left column: class, count, seed, preset, the per-segment sampling controls (``ui.controls``, in
    :data:`CONTROL_NAMES` order) and the two resample buttons, stored on ``ui``."""
    import gradio as gr

    names = class_names(pipeline)
    start_controls = sampling_controls(default_sampling(pipeline))
    ui.class_box = gr.Dropdown(
        choices=names,
        value=names[0],
        label="class",
        info="type to search; a typed name or id works too",
        filterable=True,
        allow_custom_value=True,
        elem_id="class",
    )
    ui.count_box = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="number of images", elem_id="count")
    ui.seed_box = gr.Number(
        value=0, precision=0, minimum=0, label="seed", info="goes up by 1 after every draw", elem_id="seed"
    )
    ui.preset_box = gr.Dropdown(
        choices=preset_names(), value=PIPELINE_DEFAULT, label="sampling preset (paper Table A5)",
        filterable=True, elem_id="preset",
    )
    with gr.Accordion("per-segment sampling controls (used with 'custom')", open=False):
        prologue_scale, prologue_schedule, prologue_power = _guidance_row(start_controls, "prologue")
        visual_scale, visual_schedule, visual_power = _guidance_row(start_controls, "visual")
        with gr.Row():
            prologue_temperature = gr.Number(start_controls["prologue_temperature"], label="prologue temperature")
            temperature = gr.Number(start_controls["temperature"], label="visual temperature")
        with gr.Row():
            top_k = gr.Number(start_controls["top_k"], precision=0, minimum=0, label="top-k (0 = off)")
            top_p = gr.Number(start_controls["top_p"], minimum=0, maximum=1, label="top-p (1 = off)")
    ui.controls = [
        prologue_scale, prologue_schedule, prologue_power, visual_scale, visual_schedule, visual_power,
        prologue_temperature, temperature, top_k, top_p,
    ]
    with gr.Row():
        ui.all_button = gr.Button("Resample all", variant="primary", elem_id="resample-all")
        ui.visual_button = gr.Button(
            "Resample visual (keep prologue)", interactive=has_prologue, elem_id="resample-visual"
        )


def _samples_panel(ui: SimpleNamespace, has_prologue: bool) -> None:
    """The message line, the gallery of the last draw and its editable prologue ids, stored on ``ui``."""
    import gradio as gr

    ui.message = gr.Markdown("Choose a class and press **Resample all**.", elem_id="message")
    ui.gallery = gr.Gallery(
        label="samples", columns=4, fit_columns=False, height=320, format="png", elem_id="gallery",
        object_fit="contain",
    )
    ui.prologue_box = gr.Textbox(
        label="prologue ids (one line per image; edit or paste, then Resample visual)",
        lines=2,
        max_lines=MAX_IMAGES,
        visible=has_prologue,
        elem_id="prologue-ids",
    )


def _attention_panel(ui: SimpleNamespace, has_prologue: bool) -> None:
    """The chosen image's index, the attention button and the attention map, stored on ``ui``."""
    import gradio as gr

    with gr.Row(visible=has_prologue):
        ui.index_box = gr.Number(
            value=0, precision=0, minimum=0, label="image # (click a sample)", elem_id="image-index"
        )
        ui.attention_button = gr.Button("Attention to the prologue", elem_id="attention")
    ui.attention_image = gr.Image(
        label="AR attention: visual tokens -> each prologue token (last 8 layers, heads averaged)",
        type="pil", format="png", interactive=False, visible=has_prologue, elem_id="attention-map",
    )


def _upload_panel(ui: SimpleNamespace, has_prologue: bool) -> None:
    """The upload, its reconstruction and prologue ids, and the variations gallery, stored on ``ui``."""
    import gradio as gr

    with gr.Accordion("Your image: reconstruction, prologue ids and variations", open=True):
        with gr.Row():
            ui.upload = gr.Image(
                label="upload (any size; resized)", type="pil", sources=["upload", "clipboard"], height=256,
                elem_id="upload",
            )
            ui.reconstruction = gr.Image(
                label="tokenizer reconstruction", type="pil", format="png", interactive=False, height=256,
                elem_id="reconstruction",
            )
            with gr.Column():
                ui.upload_message = gr.Markdown("Upload an image to tokenize it.", elem_id="upload-message")
                ui.upload_prologue = gr.Textbox(
                    label="its prologue ids", interactive=False, elem_id="upload-prologue-ids"
                )
                ui.variations_button = gr.Button(
                    "Variations (its prologue, the chosen class)", interactive=has_prologue,
                    elem_id="variations-button",
                )
        ui.variations = gr.Gallery(
            label="variations", columns=8, fit_columns=False, height=220, format="png", elem_id="variations",
            object_fit="contain",
        )


def _wire_sampling_events(ui: SimpleNamespace, pipeline: ProloguePipeline, track, pipeline_call: dict) -> None:
    """The preset menu (fills the controls) and the two resample buttons."""
    import gradio as gr

    @_failing_as_message
    def on_preset(preset):
        if preset == CUSTOM:  # keep what the person typed
            return [gr.update() for _ in CONTROL_NAMES]
        params = default_sampling(pipeline) if preset == PIPELINE_DEFAULT else sampling_from_controls(preset)
        values = sampling_controls(params)
        return [values[name] for name in CONTROL_NAMES]

    ui.preset_box.change(on_preset, ui.preset_box, ui.controls, api_name="preset_controls", queue=False)

    # The handlers spell every control out: gradio maps inputs to positional parameters and finds `progress` only
    # among them (not after *args).
    @_failing_as_message
    def on_resample_all(
        class_value, count, seed, preset, prologue_scale, prologue_schedule, prologue_power, visual_scale,
        visual_schedule, visual_power, prologue_temperature, temperature, top_k, top_p, progress=track,
    ):
        chosen = _handler_controls(locals())
        draw = resample_all(pipeline, class_value, count, seed, preset, chosen, _progress_fn(progress))
        return _draw_outputs(draw, kept_prologue=False)

    draw_targets = [ui.gallery, ui.prologue_box, ui.message, ui.draw_state, ui.seed_box, ui.index_box]
    ui.all_button.click(
        on_resample_all,
        [ui.class_box, ui.count_box, ui.seed_box, ui.preset_box, *ui.controls],
        draw_targets,
        api_name="resample_all",
        **pipeline_call,
    )

    @_failing_as_message
    def on_resample_visual(
        class_value, prologue_text, count, seed, preset, prologue_scale, prologue_schedule, prologue_power,
        visual_scale, visual_schedule, visual_power, prologue_temperature, temperature, top_k, top_p, progress=track,
    ):
        chosen = _handler_controls(locals())
        draw = resample_visual(
            pipeline, class_value, prologue_text, count, seed, preset, chosen, _progress_fn(progress)
        )
        return _draw_outputs(draw, kept_prologue=True)

    ui.visual_button.click(
        on_resample_visual,
        [ui.class_box, ui.prologue_box, ui.count_box, ui.seed_box, ui.preset_box, *ui.controls],
        draw_targets,
        api_name="resample_visual",
        **pipeline_call,
    )


def _wire_attention_events(ui: SimpleNamespace, pipeline: ProloguePipeline, pipeline_call: dict) -> None:
    """A click on a sample picks its index; the attention button maps that sample's attention to the prologue."""
    import gradio as gr

    def on_select(event):
        return event.index

    # gradio passes the click's SelectData to a parameter annotated with it; the annotation is set here because
    # string annotations (this module uses postponed evaluation) cannot name the locally imported gradio
    on_select.__annotations__["event"] = gr.SelectData

    ui.gallery.select(on_select, None, ui.index_box, queue=False, api_visibility="private")

    @_failing_as_message
    def on_attention(draw, index):
        return prologue_attention(pipeline, draw, index)

    ui.attention_button.click(
        on_attention, [ui.draw_state, ui.index_box], ui.attention_image, api_name="attention", **pipeline_call
    )


def _wire_upload_events(ui: SimpleNamespace, pipeline: ProloguePipeline, track, pipeline_call: dict) -> None:
    """An upload is tokenized (reconstruction, prologue ids); the variations button resamples under its prologue."""

    @_failing_as_message
    def on_upload(image):
        if image is None:  # the upload was cleared
            return None, "", "Upload an image to tokenize it.", None
        encoded = encode_image(pipeline, image)
        return encoded.reconstruction, format_prologue_ids(encoded.prologue_ids), encoded.message(), encoded

    ui.upload.change(
        on_upload, ui.upload, [ui.reconstruction, ui.upload_prologue, ui.upload_message, ui.encoded_state],
        api_name="encode_image", **pipeline_call,
    )

    @_failing_as_message
    def on_variations(
        encoded, class_value, count, seed, preset, prologue_scale, prologue_schedule, prologue_power, visual_scale,
        visual_schedule, visual_power, prologue_temperature, temperature, top_k, top_p, progress=track,
    ):
        chosen = _handler_controls(locals())
        draw = image_variations(
            pipeline, encoded, class_value, count, seed, preset, chosen, _progress_fn(progress)
        )
        return gallery_items(draw), draw_message(draw, True), draw.seed + 1

    ui.variations_button.click(
        on_variations,
        [ui.encoded_state, ui.class_box, ui.count_box, ui.seed_box, ui.preset_box, *ui.controls],
        [ui.variations, ui.upload_message, ui.seed_box],
        api_name="variations",
        **pipeline_call,
    )


def build_app(pipeline: ProloguePipeline, pipeline_name: str = "") -> gradio.Blocks:
    """The Gradio Blocks of the demo, over ``pipeline``. Every event that runs the pipeline shares one concurrency
    group of size 1 (``concurrency_id="pipeline"``): requests queue and the pipeline runs one call at a time.

    API names (for ``gradio_client``): ``/resample_all``, ``/resample_visual``, ``/encode_image``, ``/variations``,
    ``/attention``, ``/preset_controls``.
    """
    import gradio as gr

    has_prologue = pipeline.ar.config.vocabulary.has_prologue
    pipeline_call = dict(concurrency_limit=1, concurrency_id="pipeline")
    track = gr.Progress()  # gradio finds it as the default of a `progress` argument and feeds the browser's bar
    ui = SimpleNamespace()  # the widgets, by name, shared by the panel builders and the event wiring

    with gr.Blocks(title="Prologue", analytics_enabled=False) as app:
        ui.draw_state = gr.State(None)
        ui.encoded_state = gr.State(None)
        gr.Markdown(
            f"## Prologue: class-conditional autoregressive image generation\n"
            f"`{pipeline_name}`: {describe_pipeline(pipeline)}. The AR samples K prologue tokens, then the visual "
            "tokens the tokenizer decodes; **Resample visual** keeps the prologue and redraws only the visual "
            "tokens (paper Fig. 1)."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                _sampling_panel(ui, pipeline, has_prologue)
            with gr.Column(scale=2):
                _samples_panel(ui, has_prologue)
                _attention_panel(ui, has_prologue)
        _upload_panel(ui, has_prologue)
        _wire_sampling_events(ui, pipeline, track, pipeline_call)
        _wire_attention_events(ui, pipeline, pipeline_call)
        _wire_upload_events(ui, pipeline, track, pipeline_call)

    app.queue(default_concurrency_limit=1)
    return app


def launch_app(app: gradio.Blocks, port: int = 7860, block: bool = True) -> tuple[fastapi.FastAPI, str]:
    """Serve ``app`` (from :func:`build_app`, whose Blocks send no analytics) on 127.0.0.1 only, without a share link,
    MCP server or server-side rendering: nothing reaches the internet. Returns ``(fastapi_app, local_url)``; with
    ``block=False`` it returns at once (tests)."""
    fastapi_app, local_url, _ = app.launch(
        server_name="127.0.0.1",
        server_port=port,
        share=False,
        inbrowser=False,
        ssr_mode=False,
        mcp_server=False,
        prevent_thread_lock=not block,
        quiet=not block,
        show_error=True,
        css=APP_CSS,
    )
    return fastapi_app, local_url


__all__ = [
    "AppInputError",
    "CONTROL_NAMES",
    "CUSTOM",
    "Draw",
    "EncodedImage",
    "MAX_IMAGES",
    "PIPELINE_DEFAULT",
    "UNCONDITIONAL",
    "build_app",
    "check_seed",
    "class_names",
    "default_sampling",
    "describe_pipeline",
    "encode_image",
    "fit_image",
    "format_prologue_ids",
    "image_variations",
    "launch_app",
    "load_pipeline",
    "parse_prologue_ids",
    "preset_names",
    "prologue_attention",
    "resample_all",
    "resample_visual",
    "resolve_class",
    "sampling_controls",
    "sampling_from_controls",
]
