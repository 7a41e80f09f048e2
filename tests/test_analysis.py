"""Analysis: attention maps (shape, causality, rows sum to 1, a hand-computed case), prologue heatmaps, display masks,
fixed-prologue resampling, and the PNG figures."""

import math

import numpy as np
import PIL.Image
import pytest
import torch

from prologue_hf.image_grid import image_grid
from prologue_hf.research.analysis import (
    attention_maps,
    attention_maps_for_images,
    attention_maps_for_samples,
    display_attention,
    fixed_prologue_resampling,
    plot_attention_layers,
    plot_cfg_sweep,
    plot_prologue_heatmaps,
    prologue_heatmaps,
    sequence_positions,
)
from prologue_hf.testing import tiny_ar, tiny_tokenizer


@pytest.fixture(scope="module")
def ar():
    return tiny_ar()


def sequences(ar, batch=2, seed=0):
    vocab = ar.vocabulary
    generator = torch.Generator().manual_seed(seed)
    visual = torch.randint(0, vocab.visual_vocab_size, (batch, vocab.num_visual_tokens), generator=generator)
    prologue = torch.randint(0, vocab.prologue_vocab_size, (batch, vocab.num_prologue_tokens), generator=generator)
    return vocab.build_sequence(torch.arange(batch), visual, prologue)


def test_sequence_positions_match_the_vocabulary(ar):
    positions = sequence_positions(ar.vocabulary)  # K = 4, N = 16: [class][4 prologue][EOS][16 visual]
    assert positions == {"class": 0, "prologue": slice(1, 5), "eos": 5, "visual": slice(6, 22)}
    ids = sequences(ar)
    assert (ids[:, positions["prologue"]] >= ar.vocabulary.prologue_offset).all()
    assert (ids[:, positions["eos"]] == ar.vocabulary.eos_token_id).all()


def test_attention_maps_shape_rows_sum_to_one_and_causal(ar):
    ids = sequences(ar)
    assert ar.config._attn_implementation != "eager"
    maps = attention_maps(ar, ids)
    t = ids.shape[1]
    assert maps.shape == (ar.config.num_hidden_layers, ar.config.num_attention_heads, t, t)  # [L, H, T, T]
    assert torch.allclose(maps.sum(-1), torch.ones(2, 4, t), atol=1e-5)
    assert (maps >= 0).all() and torch.all(torch.triu(maps, diagonal=1) == 0)
    per_sample = attention_maps(ar, ids, average_batch=False)
    assert per_sample.shape == (2, 2, 4, t, t) and torch.allclose(per_sample.mean(0), maps)
    assert ar.config._attn_implementation != "eager"  # restored afterwards
    with pytest.raises(ValueError, match="input_ids"):
        attention_maps(ar, ids[0])


def test_attention_maps_hand_computed_uniform_case():
    """With a zero query projection every score is 0, so query q attends uniformly to the q + 1 keys <= q."""
    model = tiny_ar(seed=1)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.zero_()
    maps = attention_maps(model, sequences(model, batch=1))
    t = maps.shape[-1]
    expected = torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1)[:, None]
    assert torch.allclose(maps[0], expected.expand(4, t, t), atol=1e-6)
    assert not torch.allclose(maps[1], expected.expand(4, t, t), atol=1e-3)  # layer 1 untouched


def test_attention_maps_for_images_use_the_tokenizer_ids(ar):
    tokenizer = tiny_tokenizer()
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    encoded = tokenizer.encode(pixels)
    ids = ar.vocabulary.build_sequence([1, 2], encoded.visual_ids, encoded.prologue_ids)
    assert torch.allclose(attention_maps_for_images(tokenizer, ar, pixels, [1, 2]), attention_maps(ar, ids))


def test_display_attention_masks_diagonal_first_column_and_future():
    maps = torch.rand(3, 2, 5, 5)
    shown = display_attention(maps)
    assert shown.shape == (3, 5, 5)
    hidden = torch.isnan(shown[0])
    future = torch.ones(5, 5, dtype=torch.bool).triu(1)
    assert hidden.diagonal().all() and hidden[:, 0].all() and hidden[future].all()
    assert hidden.sum() == 5 + 10 + 4  # diagonal, strict upper triangle, column 0 below the diagonal
    assert torch.allclose(shown[0, 3, 1:3], maps[0, :, 3, 1:3].mean(0))  # head average elsewhere
    assert not torch.isnan(display_attention(maps, mask_diagonal=False, mask_first=False)[0].diagonal()).any()


def test_prologue_heatmaps_orientation_and_layer_average(ar):
    vocab = ar.vocabulary  # K = 4, N = 16 (4 x 4 grid); visual rows 6..21, prologue columns 1..4
    t = vocab.sequence_length
    q = torch.arange(t, dtype=torch.float32)[:, None]
    k = torch.arange(t, dtype=torch.float32)[None, :]
    layer = (100 * q + k).expand(2, t, t)  # [H, T, T]: entry encodes (query, key)
    maps = torch.stack([layer, layer + 1000.0])  # [L, H, T, T]
    heat = prologue_heatmaps(maps, vocab)
    assert heat.shape == (4, 4, 4)
    # prologue token 2 (key 3), grid cell (1, 2) = visual token 6 (query 6 + 6 = 12); layers 0 and 1 averaged
    assert heat[2, 1, 2].item() == pytest.approx(100 * 12 + 3 + 500.0)
    assert heat[0, 0, 0].item() == pytest.approx(100 * 6 + 1 + 500.0)
    assert prologue_heatmaps(maps, vocab, layers=[0])[3, 3, 3].item() == pytest.approx(100 * 21 + 4)
    real = prologue_heatmaps(attention_maps(ar, sequences(ar)), vocab)
    assert (real > 0).all() and (real < 1).all()
    with pytest.raises(ValueError, match="layers"):
        prologue_heatmaps(maps, vocab, layers=[2])


def _png(path):
    assert path.exists() and path.stat().st_size > 1000
    return PIL.Image.open(path)


def test_attention_and_heatmap_figures(ar, tmp_path):
    maps = attention_maps(ar, sequences(ar))
    image = _png(plot_attention_layers(maps, ar.vocabulary, tmp_path / "attn.png", layers=[0, 1], title="tiny"))
    assert image.format == "PNG" and image.size[0] > image.size[1]  # two panels side by side
    with pytest.raises(ValueError, match="layers"):
        plot_attention_layers(maps, ar.vocabulary, tmp_path / "bad.png", layers=[5])
    heat = prologue_heatmaps(maps, ar.vocabulary)
    _png(plot_prologue_heatmaps(heat, tmp_path / "heat.png"))
    background = np.zeros((32, 32, 3), np.uint8)
    _png(plot_prologue_heatmaps(heat, tmp_path / "heat_overlay.png", image=background, columns=2))


def test_cfg_sweep_figure(tmp_path):
    results = {
        "B-B": [{"scale": s, "fid": (s - 3) ** 2 + 4, "inception_score": 100 * s} for s in (2.0, 3.0, 4.0)],
        "L-XL": [{"scale": s, "fid": (s - 2.25) ** 2 + 1.5, "inception_score": 120 * s} for s in (1.5, 2.25, 3.0)],
    }
    _png(plot_cfg_sweep(results, tmp_path / "sweep.png"))
    _png(plot_cfg_sweep(results["B-B"], tmp_path / "single.png", metrics=("fid",)))
    with pytest.raises(ValueError, match="metric"):
        plot_cfg_sweep(results, tmp_path / "bad.png", metrics=("fd_effnet_lite0",))
    with pytest.raises(ValueError, match="empty"):
        plot_cfg_sweep({}, tmp_path / "empty.png")


class RecordingPipeline:
    """Wraps a pipeline and records every call's keyword arguments and output."""

    def __init__(self, pipe):
        self.pipe, self.ar, self.calls = pipe, pipe.ar, []

    def __call__(self, **kwargs):
        out = self.pipe(return_ids=True, **{k: v for k, v in kwargs.items() if k != "return_ids"})
        self.calls.append((kwargs, out))
        return out


def test_fixed_prologue_resampling_holds_the_prologue():
    from prologue_hf.testing import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    recorder = RecordingPipeline(pipe)
    rows = fixed_prologue_resampling(recorder, [3, 7], num_resamples=3, generator=torch.Generator().manual_seed(0))
    assert rows.dtype == np.uint8 and rows.shape == (3, 3, 32, 32, 3)  # 2 labels + the free reference row
    (_, first), (kwargs, resampled), (_, free) = recorder.calls
    assert torch.equal(kwargs["prologue_ids"], first.prologue_ids)
    assert torch.equal(resampled.prologue_ids, first.prologue_ids.repeat_interleave(3, dim=0))
    assert not torch.equal(resampled.visual_ids[0], resampled.visual_ids[1])  # visual tokens are resampled
    assert np.array_equal(rows[0], resampled.images[:3].permute(0, 2, 3, 1).numpy())
    assert np.array_equal(rows[2], free.images.permute(0, 2, 3, 1).numpy())
    again = fixed_prologue_resampling(pipe, [3, 7], num_resamples=3, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(again, rows)  # deterministic under a seeded generator
    grid = np.asarray(image_grid(rows.reshape(-1, 32, 32, 3), rows=3, labels=["class 3", "class 7", "free"]))
    margin = grid.shape[1] - (3 * 34 - 2)
    assert grid.shape[0] == 3 * 34 - 2 and margin > 0
    assert np.array_equal(grid[34:66, margin + 68 :], rows[1, 2])  # row r, column c of the figure is rows[r, c]
    assert math.isfinite(float(rows.mean()))


def test_attention_maps_for_samples_match_a_forward_on_the_sampled_ids():
    from prologue_hf.testing import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    maps, images = attention_maps_for_samples(pipe, [2, "class 5"], torch.Generator().manual_seed(1))
    out = pipe(class_labels=[2, 5], generator=torch.Generator().manual_seed(1), output_type="uint8", return_ids=True)
    ids = torch.cat([pipe.ar.vocabulary.class_token_ids([2, 5])[:, None], out.ids], dim=1)
    assert torch.allclose(maps, attention_maps(pipe.ar, ids))
    assert images.shape == (2, 32, 32, 3) and np.array_equal(images, out.images.permute(0, 2, 3, 1).numpy())


def test_example_analyze_writes_the_figures(tmp_path, load_example):
    import json

    from prologue_hf.testing import tiny_pipeline

    example = load_example("analyze")
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    common = ["--pipeline", str(tmp_path / "pipe"), "--device", "cpu", "--output-dir", str(tmp_path / "figs")]
    example.main(["attention", *common, "--classes", "1", "class 2", "--layers", "0", "1", "--seed", "3"])
    for name in ("attention_layers.png", "prologue_heatmaps.png"):
        _png(tmp_path / "figs" / name)
    saved = torch.load(tmp_path / "figs" / "attention_maps.pt", weights_only=True)["attention"]
    expected, _ = attention_maps_for_samples(pipe, [1, 2], torch.Generator().manual_seed(3))
    assert saved.shape == (2, 4, 22, 22) and torch.allclose(saved.float(), expected, atol=1e-3)

    example.main(["resample", *common, "--classes", "3", "--num-resamples", "2"])
    _png(tmp_path / "figs" / "fixed_prologue.png")

    rows = [{"scale": s, "fid": 5.0 - s, "inception_score": 10.0 * s} for s in (1.0, 2.0)]
    (tmp_path / "sweep.json").write_text(json.dumps(rows))
    example.main(["cfg-plot", "--results", f"tiny={tmp_path / 'sweep.json'}", "--output-dir", str(tmp_path / "figs")])
    _png(tmp_path / "figs" / "cfg_sweep.png")
