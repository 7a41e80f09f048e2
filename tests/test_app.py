"""The web demo (prologue_hf.research.app, examples/app.py): its functions directly, then the running app on 127.0.0.1
driven through gradio_client with a tiny pipeline. The real-browser test is tests_browser/ (`make test-browser`)."""

import os
import socket
import time

import numpy as np
import PIL.Image
import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from prologue_hf.evaluation.reconstruction import psnr  # noqa: E402
from prologue_hf.pipelines import (  # noqa: E402
    SAMPLING_PRESETS,
    GuidanceSchedule,
    ProloguePipeline,
    SamplingParams,
    generate_ids,
)
from prologue_hf.research import app as demo_app  # noqa: E402
from prologue_hf.research.analysis import attention_maps, prologue_heatmaps  # noqa: E402
from prologue_hf.research.app import AppInputError  # noqa: E402
from prologue_hf.testing import tiny_ar, tiny_pipeline, tiny_tokenizer  # noqa: E402

K, P, N, SIZE = 4, 16, 16, 32  # the tiny pipeline: 4 prologue ids in [0, 16), 16 visual ids, 32px


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_pipeline")
    tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipe(pipeline_dir):
    return demo_app.load_pipeline(pipeline_dir, device="cpu")


@pytest.fixture(scope="module")
def pipe_without_prologue():
    tokenizer = tiny_tokenizer(num_prologue_tokens=0)
    return ProloguePipeline(tokenizer=tokenizer, ar=tiny_ar(tokenizer.config), id2label={i: f"c{i}" for i in range(10)})


def _png(path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        assert image.format == "PNG"
        return np.array(image.convert("RGB"))


# --------------------------------------------------------------------------------------------- loading
def test_load_pipeline_round_trip_and_errors(pipe, tmp_path):
    reference = tiny_pipeline()
    generator = torch.Generator().manual_seed(1)
    expected = reference([2], num_images_per_label=2, generator=generator, output_type="uint8").images
    got = pipe([2], num_images_per_label=2, generator=torch.Generator().manual_seed(1), output_type="uint8").images
    assert torch.equal(got, expected)
    with pytest.raises(FileNotFoundError, match="make demo"):
        demo_app.load_pipeline(tmp_path / "missing" / "pipeline")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        demo_app.load_pipeline(tmp_path / "empty")


def test_cli_refuses_a_missing_pipeline(load_example, tmp_path, capsys):
    cli = load_example("app")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--pipeline", str(tmp_path / "nothing")])
    assert exit_info.value.code == 2
    assert "make demo" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- classes
def test_class_menu_and_resolution(pipe):
    names = demo_app.class_names(pipe)
    assert names == [f"class {i}" for i in range(10)] + [demo_app.UNCONDITIONAL]
    assert demo_app.resolve_class(pipe, "class 4") == (4, "class 4")
    assert demo_app.resolve_class(pipe, "  CLASS 4 ") == (4, "class 4")
    assert demo_app.resolve_class(pipe, "7") == (7, "class 7")
    assert demo_app.resolve_class(pipe, 7) == (7, "class 7")
    assert demo_app.resolve_class(pipe, demo_app.UNCONDITIONAL) == (10, demo_app.UNCONDITIONAL)
    with pytest.raises(AppInputError, match=r"class: unknown label name 'clas 4'; close matches: \['class 4'"):
        demo_app.resolve_class(pipe, "clas 4")
    with pytest.raises(AppInputError, match="choose a class"):
        demo_app.resolve_class(pipe, "  ")
    with pytest.raises(AppInputError, match=r"outside \[0, 10\]"):
        demo_app.resolve_class(pipe, "11")


def test_imagenet_synonyms_resolve():
    imagenet = tiny_pipeline(num_classes=1000)
    names = demo_app.class_names(imagenet)
    assert len(names) == 1001 and names[0] == imagenet.config.id2label[0]
    assert demo_app.resolve_class(imagenet, names[1]) == (1, names[1])  # the full entry, commas included
    synonym = names[1].split(",")[-1].strip()
    assert demo_app.resolve_class(imagenet, synonym.upper()) == (1, names[1])


# --------------------------------------------------------------------------------------------- sampling settings
def test_schedule_menu_matches_guidance_schedule():
    for schedule in demo_app.SCHEDULE_CHOICES:
        GuidanceSchedule(2.0, schedule, 0.5)
    with pytest.raises(ValueError):
        GuidanceSchedule(2.0, "exponential")


def test_presets_and_controls():
    assert demo_app.preset_names()[:2] == [demo_app.PIPELINE_DEFAULT, demo_app.CUSTOM]
    assert set(demo_app.preset_names()[2:]) == set(SAMPLING_PRESETS)
    assert demo_app.sampling_from_controls(demo_app.PIPELINE_DEFAULT) is None
    assert demo_app.sampling_from_controls("prologue-B-B") == SAMPLING_PRESETS["prologue-B-B"]
    controls = demo_app.sampling_controls(SAMPLING_PRESETS["prologue-B-B"])
    assert controls == {
        "prologue_scale": 0.7, "prologue_schedule": "constant", "prologue_power": 1.0,
        "visual_scale": 3.75, "visual_schedule": "cosine", "visual_power": 0.2,
        "prologue_temperature": 1.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
    }  # fmt: skip
    with pytest.raises(AppInputError, match="preset: unknown sampling preset 'prologue-Z'"):
        demo_app.sampling_from_controls("prologue-Z")


@pytest.mark.parametrize("preset", sorted(SAMPLING_PRESETS))
def test_controls_reproduce_every_preset(preset, pipe, pipe_without_prologue):
    """Choosing a preset fills the controls; 'custom' with those values samples exactly as the preset: the same
    guided, tempered logits at every step and the same ids (K = 4; K = 0 for the global-mode baselines, which the
    controls show on the visual segment)."""
    params = SAMPLING_PRESETS[preset]
    custom = demo_app.sampling_from_controls(demo_app.CUSTOM, demo_app.sampling_controls(params))
    ar = (pipe_without_prologue if params.guidance is not None else pipe).ar
    labels = torch.tensor([1, 4])
    runs = [
        generate_ids(ar, labels, sampling, generator=torch.Generator().manual_seed(0), return_step_logits=True)
        for sampling in (params, custom)
    ]
    assert torch.equal(runs[0].ids, runs[1].ids)
    assert torch.allclose(runs[0].step_logits, runs[1].step_logits, atol=1e-5)


def test_custom_controls_are_read_and_checked():
    controls = dict(
        prologue_scale=1.5, prologue_schedule="linear", prologue_power=1.0, visual_scale=0.0, visual_schedule="cosine",
        visual_power=0.5, prologue_temperature=0.8, temperature=0.9, top_k=5.0, top_p=0.95,
    )  # fmt: skip
    params = demo_app.sampling_from_controls(demo_app.CUSTOM, controls)
    assert params == SamplingParams(
        prologue_guidance=GuidanceSchedule(1.5, "linear", 1.0),
        visual_guidance=GuidanceSchedule(0.0, "cosine", 0.5),
        temperature=0.9,
        prologue_temperature=0.8,
        top_k=5,
        top_p=0.95,
    )
    assert not params.visual_guidance.enabled  # scale 0 = no visual guidance
    with pytest.raises(AppInputError, match="custom sampling: temperature must be a finite number > 0"):
        demo_app.sampling_from_controls(demo_app.CUSTOM, {**controls, "temperature": 0.0})
    with pytest.raises(AppInputError, match="top-k must be a whole number"):
        demo_app.sampling_from_controls(demo_app.CUSTOM, {**controls, "top_k": 2.5})
    with pytest.raises(AppInputError, match=r"missing \['top_p'\]"):
        demo_app.sampling_from_controls(demo_app.CUSTOM, {**controls, "top_p": None})


# --------------------------------------------------------------------------------------------- prologue ids text
def test_prologue_ids_text_round_trip_and_errors(pipe, pipe_without_prologue):
    ids = torch.tensor([[0, 15, 3, 7], [9, 9, 1, 2]])
    text = demo_app.format_prologue_ids(ids)
    assert text == "0 15 3 7\n9 9 1 2"
    assert torch.equal(demo_app.parse_prologue_ids(text, pipe), ids)
    assert torch.equal(demo_app.parse_prologue_ids("[0, 15, 3, 7]\n\n 9,9,1,2 ", pipe), ids)
    with pytest.raises(AppInputError, match="line 2: expected 4 ids, got 3"):
        demo_app.parse_prologue_ids("0 1 2 3\n1 2 3", pipe)
    with pytest.raises(AppInputError, match=r"line 1: ids must lie in \[0, 16\), got \[16\]"):
        demo_app.parse_prologue_ids("0 1 2 16", pipe)
    with pytest.raises(AppInputError, match="only integers"):
        demo_app.parse_prologue_ids("0 1 2 x3", pipe)
    with pytest.raises(AppInputError, match="press Resample all first"):
        demo_app.parse_prologue_ids("", pipe)
    with pytest.raises(AppInputError, match="no prologue tokens"):
        demo_app.parse_prologue_ids("0 1 2 3", pipe_without_prologue)


# --------------------------------------------------------------------------------------------- sampling
def test_resample_all_is_the_pipeline_call_with_progress(pipe):
    steps = []
    draw = demo_app.resample_all(pipe, "class 3", 3, 7, "prologue-B-B", None, lambda done, total: steps.append((done, total)))
    expected = pipe(
        [3], num_images_per_label=3, generator=torch.Generator().manual_seed(7), sampling="prologue-B-B",
        output_type="uint8", return_ids=True,
    )  # fmt: skip
    assert draw.images.dtype == np.uint8 and draw.images.shape == (3, SIZE, SIZE, 3)
    assert np.array_equal(draw.images, expected.images.permute(0, 2, 3, 1).numpy())
    assert torch.equal(draw.prologue_ids, expected.prologue_ids)
    assert torch.equal(draw.visual_ids, expected.visual_ids)
    assert (draw.class_id, draw.class_name, draw.seed, draw.sampling) == (3, "class 3", 7, "prologue-B-B")
    total = K + 1 + N
    assert steps == [(s, total) for s in range(1, total + 1)]
    again = demo_app.resample_all(pipe, "class 3", 3, 7, "prologue-B-B")
    assert np.array_equal(again.images, draw.images)
    other = demo_app.resample_all(pipe, "class 3", 3, 8, "prologue-B-B")
    assert not torch.equal(other.visual_ids, draw.visual_ids)
    message = demo_app.draw_message(draw, kept_prologue=False)
    assert "3 image(s) of **class 3** (class 3): new prologue and visual tokens; seed 7, sampling prologue-B-B" in message


def test_resample_all_rejects_bad_input(pipe):
    with pytest.raises(AppInputError, match="unknown label name 'zebra'"):
        demo_app.resample_all(pipe, "zebra", 2, 0)
    with pytest.raises(AppInputError, match=r"number of images must lie in \[1, 16\], got 0"):
        demo_app.resample_all(pipe, "class 1", 0, 0)
    with pytest.raises(AppInputError, match="number of images must be a whole number"):
        demo_app.resample_all(pipe, "class 1", 2.5, 0)
    with pytest.raises(AppInputError, match="seed must be a whole number"):
        demo_app.resample_all(pipe, "class 1", 2, 1.5)
    with pytest.raises(AppInputError, match="seed must lie in"):
        demo_app.resample_all(pipe, "class 1", 2, -1)


def test_resample_visual_keeps_the_prologue(pipe):
    first = demo_app.resample_all(pipe, "class 5", 3, 0)
    text = demo_app.format_prologue_ids(first.prologue_ids)
    kept = demo_app.resample_visual(pipe, "class 5", text, 3, 1)
    assert torch.equal(kept.prologue_ids, first.prologue_ids)
    assert not torch.equal(kept.visual_ids, first.visual_ids)
    expected = pipe(
        [5], num_images_per_label=3, generator=torch.Generator().manual_seed(1), prologue_ids=first.prologue_ids,
        output_type="uint8",
    ).images  # fmt: skip
    assert np.array_equal(kept.images, expected.permute(0, 2, 3, 1).numpy())
    # one line: every image shares it, and the number of images counts
    shared = demo_app.resample_visual(pipe, "class 5", "1 2 3 4", 5, 2)
    assert shared.prologue_ids.tolist() == [[1, 2, 3, 4]] * 5
    # a tensor works as the text does
    from_tensor = demo_app.resample_visual(pipe, "class 5", first.prologue_ids, 1, 1)
    assert np.array_equal(from_tensor.images, kept.images)
    assert "visual tokens redrawn under the given prologue" in demo_app.draw_message(kept, kept_prologue=True)


def test_pipeline_without_prologue(pipe_without_prologue):
    draw = demo_app.resample_all(pipe_without_prologue, "c2", 2, 0)
    assert draw.prologue_ids is None and demo_app.format_prologue_ids(draw.prologue_ids) == ""
    with pytest.raises(AppInputError, match="no prologue tokens"):
        demo_app.resample_visual(pipe_without_prologue, "c2", "1 2 3 4", 2, 0)
    with pytest.raises(AppInputError, match="needs prologue tokens"):
        demo_app.prologue_attention(pipe_without_prologue, draw, 0)
    encoded = demo_app.encode_image(pipe_without_prologue, PIL.Image.new("RGB", (SIZE, SIZE), (90, 10, 200)))
    assert encoded.prologue_ids is None
    with pytest.raises(AppInputError, match="need prologue tokens"):
        demo_app.image_variations(pipe_without_prologue, encoded, "c2", 2, 0)


# --------------------------------------------------------------------------------------------- uploads
def test_fit_image_resizes_any_image():
    wide = PIL.Image.new("RGBA", (90, 30), (10, 20, 30, 128))
    wide.paste((250, 0, 0, 255), (30, 0, 60, 30))  # the centered square is red, the sides dark
    fitted = demo_app.fit_image(wide, SIZE)
    assert fitted.size == (SIZE, SIZE) and fitted.mode == "RGB"
    assert np.array(fitted)[SIZE // 2, SIZE // 2].tolist() == [250, 0, 0]
    gray = demo_app.fit_image(np.full((20, 40, 3), 77, dtype=np.uint8), SIZE, channels=1)
    assert gray.mode == "L" and gray.size == (SIZE, SIZE) and np.array(gray).max() == 77
    exact = PIL.Image.new("RGB", (SIZE, SIZE), (1, 2, 3))
    assert np.array_equal(np.array(demo_app.fit_image(exact, SIZE)), np.array(exact))
    with pytest.raises(AppInputError, match="expected uint8 pixels"):
        demo_app.fit_image(np.zeros((4, 4, 3), dtype=np.float32), SIZE)


def test_encode_image_is_the_tokenizer_round_trip(pipe):
    rng = np.random.default_rng(0)
    upload = PIL.Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    encoded = demo_app.encode_image(pipe, upload)
    assert encoded.original_size == (48, 40) and encoded.image.size == (SIZE, SIZE) and encoded.resized
    assert "resized from 48x40 to 32x32" in encoded.message()
    tokenizer = pipe.tokenizer
    pixels = tokenizer.preprocess(np.array(encoded.image))
    reference = tokenizer.encode(pixels)
    assert torch.equal(encoded.prologue_ids, reference.prologue_ids)
    assert torch.equal(encoded.visual_ids, reference.visual_ids)
    reconstruction = tokenizer.postprocess(tokenizer.decode(reference.visual_ids).pixel_values, "uint8")
    assert np.array_equal(np.array(encoded.reconstruction), reconstruction[0].permute(1, 2, 0).numpy())
    original = torch.from_numpy(np.array(encoded.image)).permute(2, 0, 1)[None]
    assert encoded.psnr == pytest.approx(float(psnr(reconstruction, original)[0]))
    same_size = demo_app.encode_image(pipe, encoded.image)
    assert not same_size.resized and "the tokenizer's size" in same_size.message()
    with pytest.raises(AppInputError, match="upload an image first"):
        demo_app.encode_image(pipe, None)


def test_variations_use_the_uploads_prologue(pipe):
    encoded = demo_app.encode_image(pipe, PIL.Image.new("RGB", (64, 64), (200, 120, 30)))
    draw = demo_app.image_variations(pipe, encoded, "class 1", 3, 4)
    assert draw.prologue_ids.tolist() == encoded.prologue_ids.tolist() * 3
    assert draw.class_id == 1
    expected = pipe(
        [1], num_images_per_label=3, generator=torch.Generator().manual_seed(4), prologue_ids=encoded.prologue_ids,
        output_type="uint8",
    ).images  # fmt: skip
    assert np.array_equal(draw.images, expected.permute(0, 2, 3, 1).numpy())
    with pytest.raises(AppInputError, match="upload an image first"):
        demo_app.image_variations(pipe, None, "class 1", 3, 4)


# --------------------------------------------------------------------------------------------- attention
def test_prologue_attention_draws_the_heatmaps(pipe, monkeypatch):
    draw = demo_app.resample_all(pipe, "class 2", 2, 0)
    seen = {}
    original = demo_app.prologue_heatmaps

    def spy(maps, vocabulary, layers=None):
        seen["heatmaps"] = original(maps, vocabulary, layers)
        return seen["heatmaps"]

    monkeypatch.setattr(demo_app, "prologue_heatmaps", spy)
    figure = demo_app.prologue_attention(pipe, draw, 1)
    vocab = pipe.ar.config.vocabulary
    sequence = vocab.build_sequence([2], draw.visual_ids[1:2], draw.prologue_ids[1:2])
    expected = prologue_heatmaps(attention_maps(pipe.ar, sequence), vocab)
    assert seen["heatmaps"].shape == (K, 4, 4)
    assert torch.allclose(seen["heatmaps"], expected)
    pixels = np.array(figure)
    assert figure.mode == "RGB" and pixels.shape[0] > 100 and pixels.shape[1] > 4 * 100
    assert pixels.std() > 10  # panels drawn, not an empty canvas
    with pytest.raises(AppInputError, match=r"image index must lie in \[0, 2\)"):
        demo_app.prologue_attention(pipe, draw, 2)
    with pytest.raises(AppInputError, match="draw images first"):
        demo_app.prologue_attention(pipe, None, 0)


# --------------------------------------------------------------------------------------------- converted checkpoints
@pytest.mark.parametrize(
    "fixture", ["official-prologue-tiny", "official-2d-tiny", "official-1d-tiny", "official-post-tiny", "official-onestage-tiny"]
)
def test_converted_official_checkpoints_work_the_same_way(fixture, official_fixture, load_example, tmp_path):
    """A folder written by examples/convert_official_checkpoint.py from the authors' checkpoints: every function of
    the app runs on it; the ones that need prologue tokens or a visual grid say so when the family has none."""
    source, out = official_fixture(fixture), tmp_path / "converted"
    argv = ["--config", str(source / "config.yaml"), "--tokenizer-dir", str(source / "tokenizer"), "--output-dir", str(out)]
    if (source / "ar").is_dir():  # OneStage keeps its AR inside the tokenizer checkpoint
        argv += ["--ar-dir", str(source / "ar")]
    load_example("convert_official_checkpoint").main(argv)
    converted = demo_app.load_pipeline(out, device="cpu")
    config, vocab = converted.tokenizer.config, converted.ar.config.vocabulary
    size, channels = config.image_size, config.num_channels
    name = demo_app.class_names(converted)[1]
    draw = demo_app.resample_all(converted, name, 2, 0, "pipeline default")
    assert draw.images.shape == (2, size, size, channels) and draw.class_id == 1
    encoded = demo_app.encode_image(converted, PIL.Image.new("RGB", (size + 9, size + 3), (30, 160, 90)))
    assert encoded.image.size == (size, size) and encoded.resized
    assert encoded.visual_ids.shape == (1, vocab.num_visual_tokens)
    if not vocab.has_prologue:
        assert draw.prologue_ids is None and encoded.prologue_ids is None
        with pytest.raises(AppInputError, match="no prologue tokens"):
            demo_app.resample_visual(converted, name, "0", 2, 1)
        return
    kept = demo_app.resample_visual(converted, name, demo_app.format_prologue_ids(draw.prologue_ids), 2, 1)
    assert torch.equal(kept.prologue_ids, draw.prologue_ids)
    variations = demo_app.image_variations(converted, encoded, name, 2, 1)
    assert variations.prologue_ids.tolist() == encoded.prologue_ids.tolist() * 2
    figure = demo_app.prologue_attention(converted, draw, 1)
    assert figure.mode == "RGB" and np.array(figure).std() > 10


# --------------------------------------------------------------------------------------------- the running app
class _ConnectionLog:
    """Every host a socket of this process connects to or looks up while the app runs."""

    def __init__(self, monkeypatch):
        self.hosts = []
        connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

        def logged_connect(sock, address):
            if isinstance(address, tuple):
                self.hosts.append(address[0])
            return connect(sock, address)

        def logged_getaddrinfo(host, *args, **kwargs):
            self.hosts.append(host)
            return getaddrinfo(host, *args, **kwargs)

        monkeypatch.setattr(socket.socket, "connect", logged_connect)
        monkeypatch.setattr(socket, "getaddrinfo", logged_getaddrinfo)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_app_wiring(pipe):
    app = demo_app.build_app(pipe, pipeline_name="tiny")
    functions = {fn.api_name: fn for fn in app.fns.values() if fn.api_name}
    sampling = ["resample_all", "resample_visual", "variations"]
    for name in [*sampling, "attention", "encode_image"]:
        assert functions[name].concurrency_limit == 1 and functions[name].concurrency_id == "pipeline", name
        assert functions[name].queue
    for name in sampling:
        assert functions[name].tracks_progress, name
    assert any(fn.collects_event_data for fn in app.fns.values())  # the gallery's select -> image #


def test_running_app_through_gradio_client(pipe, tmp_path, monkeypatch):
    import huggingface_hub.constants
    from gradio_client import Client, handle_file

    # gradio_client (the test's side, not the app) would send a Hub telemetry ping unless offline or disabled
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    log = _ConnectionLog(monkeypatch)
    app = demo_app.build_app(pipe, pipeline_name="tiny")
    _, url = demo_app.launch_app(app, port=_free_port(), block=False)
    try:
        assert url.startswith("http://127.0.0.1:")
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        common = dict(preset="prologue-B-B")

        # preset -> the controls show it
        controls = client.predict("prologue-B-B", api_name="/preset_controls")
        expected_controls = demo_app.sampling_controls(SAMPLING_PRESETS["prologue-B-B"])
        assert list(controls) == [expected_controls[name] for name in demo_app.CONTROL_NAMES]

        # Resample all: images, their prologue ids, a message, the next seed
        gallery, prologue_text, message, next_seed, index = client.predict(
            class_value="class 3", count=3, seed=7, api_name="/resample_all", **common
        )
        direct = demo_app.resample_all(pipe, "class 3", 3, 7, "prologue-B-B")
        assert [item["caption"] for item in gallery] == ["#0", "#1", "#2"]
        images = np.stack([_png(item["image"]) for item in gallery])
        assert np.array_equal(images, direct.images)
        assert prologue_text == demo_app.format_prologue_ids(direct.prologue_ids)
        assert "3 image(s) of **class 3**" in message and (next_seed, index) == (8, 0)

        # Resample visual: the prologue ids shown stay, the images change
        gallery2, prologue_text2, message2, next_seed2, _ = client.predict(
            class_value="class 3", prologue_text=prologue_text, count=3, seed=next_seed, api_name="/resample_visual",
            **common,
        )  # fmt: skip
        images2 = np.stack([_png(item["image"]) for item in gallery2])
        assert prologue_text2 == prologue_text and next_seed2 == 9
        assert not np.array_equal(images2, images)
        assert np.array_equal(images2, demo_app.resample_visual(pipe, "class 3", prologue_text, 3, 8, "prologue-B-B").images)
        assert "redrawn under the given prologue" in message2

        # attention of image #1 of the last draw (the session's state)
        attention = _png(client.predict(index=1, api_name="/attention"))
        last = demo_app.resample_visual(pipe, "class 3", prologue_text, 3, 8, "prologue-B-B")
        assert np.array_equal(attention, np.array(demo_app.prologue_attention(pipe, last, 1)))

        # upload of a wrong-size image -> resized; reconstruction and prologue ids
        upload_path = tmp_path / "upload.png"
        PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(upload_path)
        reconstruction, upload_ids, upload_message = client.predict(handle_file(str(upload_path)), api_name="/encode_image")
        with PIL.Image.open(upload_path) as image:
            encoded = demo_app.encode_image(pipe, image.copy())
        assert np.array_equal(_png(reconstruction), np.array(encoded.reconstruction))
        assert upload_ids == demo_app.format_prologue_ids(encoded.prologue_ids)
        assert "resized from 56x40 to 32x32" in upload_message

        # variations under the upload's prologue
        variations, variations_message, _ = client.predict(
            class_value="class 1", count=2, seed=4, api_name="/variations", **common
        )
        expected = demo_app.image_variations(pipe, encoded, "class 1", 2, 4, "prologue-B-B")
        assert np.array_equal(np.stack([_png(item["image"]) for item in variations]), expected.images)
        assert "2 image(s) of **class 1**" in variations_message

        # a bad class: the message, and the server still answers
        with pytest.raises(Exception, match="unknown label name 'no such class'") as error_info:
            client.predict(class_value="no such class", count=1, seed=0, api_name="/resample_all")
        assert type(error_info.value).__name__ == "AppError"
        gallery3, *_ = client.predict(class_value="class 0", count=1, seed=0, api_name="/resample_all")
        assert len(gallery3) == 1
    finally:
        app.close()
    assert log.hosts and set(log.hosts) <= {"127.0.0.1", "localhost", "::1"}, sorted(set(log.hosts))


def test_pipeline_calls_queue_one_at_a_time(pipe, monkeypatch):
    """Two browsers press Resample all at once: the second call starts after the first ended."""
    import threading

    import huggingface_hub.constants
    from gradio_client import Client

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    spans, lock = [], threading.Lock()
    original = demo_app.resample_all

    def slow_resample_all(*args, **kwargs):
        start = time.monotonic()
        result = original(*args, **kwargs)
        time.sleep(0.5)  # long enough that an unqueued second call would overlap
        with lock:
            spans.append((start, time.monotonic()))
        return result

    monkeypatch.setattr(demo_app, "resample_all", slow_resample_all)
    app = demo_app.build_app(pipe, pipeline_name="tiny")
    _, url = demo_app.launch_app(app, port=_free_port(), block=False)
    try:
        clients = [Client(url, verbose=False) for _ in range(2)]
        jobs = [c.submit(class_value="class 1", count=1, seed=i, api_name="/resample_all") for i, c in enumerate(clients)]
        results = [job.result(timeout=120) for job in jobs]
    finally:
        app.close()
    assert [len(result[0]) for result in results] == [1, 1]
    (first_start, first_end), (second_start, _) = sorted(spans)
    assert second_start >= first_end
