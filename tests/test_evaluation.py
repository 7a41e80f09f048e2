"""Evaluation: PSNR/SSIM, Fréchet distance, feature extractors, ADM .npz sampling, generation metrics, linear probe,
shipped evaluate modules. Everything offline and on tiny data."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from prologue_hf.evaluation import (
    FD_EFFNET_LITE0,
    EfficientNetLite0,
    EfficientNetLite0Features,
    InceptionV3Features,
    SamplingPlan,
    available_metrics,
    check_adm_images,
    compute_generation_metrics,
    evaluate_reconstruction,
    extract_probe_features,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_statistics,
    generate_shards,
    iter_npz_batches,
    load_metric,
    merge_shards,
    pooled_token_features,
    psnr,
    run_cfg_sweep,
    sample_to_npz,
    ssim,
    train_linear_probe,
    with_visual_guidance_scale,
    write_npz_streaming,
)
from prologue_hf.evaluation.features import _same_padding
from prologue_hf.testing import tiny_tokenizer


class StatsExtractor(nn.Module):
    """A tiny stand-in feature extractor: per-channel mean and std of the image, constant logits."""

    def forward(self, images):
        x = images.float() / 255.0
        features = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)  # [B, 6]
        return {"features": features, "logits": torch.zeros(len(images), 10)}


def random_images(n, size=32, seed=0, low=0, high=256):
    rng = np.random.default_rng(seed)
    return rng.integers(low, high, (n, size, size, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ PSNR / SSIM
def test_psnr_matches_hand_values():
    a = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    b = a.clone()
    b[0] += 1  # MSE 1 -> 20 log10(255)
    b[1, :, :2] += 10  # half the pixels off by 10 -> MSE 50
    values = psnr(b, a)
    assert values.shape == (2,)
    assert values[0].item() == pytest.approx(20 * math.log10(255), abs=1e-9)
    assert values[1].item() == pytest.approx(10 * math.log10(255**2 / 50), abs=1e-9)
    assert torch.isinf(psnr(a, a)).all()
    with pytest.raises(ValueError, match="reconstructions and originals"):
        psnr(a[0], a[0])


def test_ssim_is_one_for_identical_and_lower_for_noise():
    a = torch.from_numpy(random_images(2)).permute(0, 3, 1, 2)
    noisy = (a.float() + torch.randn(a.shape, generator=torch.Generator().manual_seed(0)) * 40).clamp(0, 255)
    assert torch.allclose(ssim(a, a), torch.ones(2, dtype=torch.float64))
    assert (ssim(noisy.to(torch.uint8), a) < 0.9).all()


# ------------------------------------------------------------------------------------------------ Fréchet distance
def test_frechet_distance_self_zero_shift_and_hand_value():
    x = torch.randn(2000, 8, generator=torch.Generator().manual_seed(0))
    assert abs(frechet_distance(x, x)) < 1e-8
    # a shift leaves the covariance unchanged: FD = |shift|^2 = 8 * 0.5^2
    assert frechet_distance(x, x + 0.5) == pytest.approx(2.0, rel=1e-8)
    # N(0, I) vs N(0, 4I) in D dims: Tr(I + 4I - 2 * 2I) = D
    eye = np.eye(5)
    value = frechet_distance_from_statistics({"mu": np.zeros(5), "sigma": eye}, {"mu": np.ones(5), "sigma": 4 * eye})
    assert value == pytest.approx(5.0 + 5.0, rel=1e-10)
    with pytest.raises(ValueError, match="same extractor"):
        frechet_distance(x, x[:, :4])
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(x[:1])


def test_frechet_distance_agrees_with_torchmetrics_fid_on_a_stand_in_extractor():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Pooled(nn.Module):  # torchmetrics calls the module on uint8 images and wants [B, D]
        def forward(self, images):
            return StatsExtractor()(images)["features"].double()

    real = torch.from_numpy(random_images(64, seed=1)).permute(0, 3, 1, 2)
    fake = torch.from_numpy(random_images(64, seed=2, low=30, high=200)).permute(0, 3, 1, 2)
    metric = FrechetInceptionDistance(feature=Pooled(), normalize=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected = float(metric.compute())
    ours = frechet_distance(StatsExtractor()(fake)["features"], StatsExtractor()(real)["features"])
    assert ours == pytest.approx(expected, rel=1e-4)
    assert ours > 0.01


# ------------------------------------------------------------------------------------------------ extractors
def test_same_padding_is_tensorflow_same():
    x = torch.zeros(1, 1, 224, 224)
    assert _same_padding(x, 3, 2).shape[-2:] == (225, 225)  # pad (0, 1): extra pixel bottom / right
    assert _same_padding(x, 5, 1).shape[-2:] == (228, 228)  # pad (2, 2)
    y = _same_padding(torch.ones(1, 1, 4, 4), 3, 2)
    assert y[0, 0, -1].sum() == 0 and y[0, 0, 0].sum() == 4  # the extra row is at the bottom


def test_effnet_lite0_shipped_weights_classify_a_real_photo():
    matplotlib = pytest.importorskip("matplotlib")
    import PIL.Image

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = np.asarray(PIL.Image.open(path).convert("RGB").resize((224, 224)))
    extractor = EfficientNetLite0Features()
    out = extractor(image[None])
    assert out["features"].shape == (1, 1280) and out["logits"].shape == (1, 1000)
    assert (out["features"] >= 0).all() and (out["features"] <= 6).all()  # ReLU6 then average pool
    assert int(out["logits"].argmax()) == 652  # ImageNet "military uniform"


def test_fd_effnet_lite0_of_perturbed_images_is_positive():
    extractor = EfficientNetLite0Features()
    images = random_images(4, seed=3)
    darker = (images // 2).astype(np.uint8)
    feats = extractor(images)["features"]  # (the distance of a set to itself: test_shipped_evaluate_modules...)
    assert frechet_distance(feats, extractor(darker)["features"]) > 1e-2
    with pytest.raises(ValueError, match="uint8"):
        extractor(images.astype(np.float32))


def test_inception_requires_a_local_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No InceptionV3 weights given") as info:
        InceptionV3Features(None)
    assert "inception_weights" in str(info.value) and "FD-EffNetLite0" in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        InceptionV3Features(tmp_path / "missing.pth")
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"weight": torch.zeros(2)}, wrong)
    with pytest.raises(ValueError, match="not the TF-FID InceptionV3"):
        InceptionV3Features(wrong)
    partial = tmp_path / "partial.pth"  # right head, missing body: another layout
    torch.save({"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}, partial)
    with pytest.raises(ValueError, match="does not fit torch-fidelity's InceptionV3"):
        InceptionV3Features(partial)
    with pytest.raises(FileNotFoundError, match="No InceptionV3 weights"):
        compute_generation_metrics(random_images(4), random_images(4), metrics=("fid",))


def test_inception_success_path_with_random_weights(tmp_path, monkeypatch):
    """The real torch-fidelity network, loaded through our checks from a local (random-weight) file."""
    from safetensors.torch import save_file
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    # Build the architecture with its random init and no download, only to get a state dict of the right layout.
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
    monkeypatch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *args, **kwargs: None)
    torch.manual_seed(0)
    net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    state = {k: v.clone().contiguous() for k, v in net.state_dict().items()}
    monkeypatch.undo()
    weights = tmp_path / "inception.safetensors"
    save_file(state, weights)

    extractor = InceptionV3Features(weights)
    assert torch.equal(extractor.model.fc.weight, state["fc.weight"])
    images = random_images(2, seed=4)
    out = extractor(images)
    assert out["features"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    # (the FID formula itself is covered with stand-in features; a 2048-d eigen-decomposition is slow on CI CPUs)
    results = compute_generation_metrics(
        images, images, metrics=("inception_score",), inception=extractor, inception_score_splits=2
    )
    assert results["num_samples"] == 2 and results["inception_score"] >= 1.0 - 1e-9


# ------------------------------------------------------------------------------------------------ ADM .npz
def test_streaming_npz_round_trip_and_adm_check(tmp_path):
    images = random_images(7, size=4)
    labels = np.arange(7)
    path = write_npz_streaming(
        tmp_path / "x.npz",
        {"arr_0": (images.shape, np.uint8, [images[:3], images[3:]]), "arr_1": ((7,), np.int64, [labels])},
    )
    with np.load(path) as data:
        assert data.files == ["arr_0", "arr_1"]
        assert np.array_equal(data["arr_0"], images) and np.array_equal(data["arr_1"], labels)
    assert check_adm_images(path) == (7, 4, 4)
    batches = list(iter_npz_batches(path, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 1] and np.array_equal(np.concatenate(batches), images)
    np.savez_compressed(tmp_path / "c.npz", images)  # deflated archives stream as well
    assert np.array_equal(np.concatenate(list(iter_npz_batches(tmp_path / "c.npz", batch_size=2))), images)
    np.savez(tmp_path / "nchw.npz", images.transpose(0, 3, 1, 2).astype(np.float32))
    with pytest.raises(ValueError, match="uint8 \\[N, H, W, 3\\]"):
        check_adm_images(tmp_path / "nchw.npz")
    with pytest.raises(ValueError, match="declared shape"):
        write_npz_streaming(tmp_path / "bad.npz", {"arr_0": ((8, 4, 4, 3), np.uint8, [images])})
    assert not (tmp_path / "bad.npz").exists()


def test_sampling_plan_labels_seeds_and_assignment():
    plan = SamplingPlan(num_classes=3, images_per_class=3, shard_size=4, seed=10)
    assert plan.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert plan.num_shards == 3 and plan.shard_labels(2).tolist() == [2] and plan.shard_seed(2) == 12
    assert plan.shards_of_process(0, 2) == [0, 2] and plan.shards_of_process(1, 2) == [1]
    with pytest.raises(ValueError, match="images_per_class"):
        SamplingPlan(num_classes=3, images_per_class=0)


@pytest.fixture(scope="module")
def pipe():
    from prologue_hf.testing import tiny_pipeline

    pipeline = tiny_pipeline(num_classes=3)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_sample_to_npz_adm_layout_sharded_resumable(pipe, tmp_path):
    kwargs = dict(num_classes=3, images_per_class=2, batch_size=3, shard_size=4, seed=7, sampling="prologue-B-B")
    path = sample_to_npz(pipe, tmp_path / "single", **kwargs)
    with np.load(path) as data:
        images, labels = data["arr_0"], data["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (6, 32, 32, 3)  # ADM: NHWC uint8
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    # shard 0 is exactly one seeded pipeline run over its labels, split in batches of 3
    generator = torch.Generator().manual_seed(7)
    direct = [
        pipe(class_labels=chunk, generator=generator, sampling="prologue-B-B", output_type="uint8").images
        for chunk in ([0, 0, 1], [1])
    ]
    assert np.array_equal(images[:4], torch.cat(direct).permute(0, 2, 3, 1).numpy())

    # two "processes" with round-robin shards give the same file as one process
    plan = SamplingPlan(3, 2, 4, 7)
    assert generate_shards(pipe, tmp_path / "multi", plan, 3, "prologue-B-B", process_index=1, num_processes=2) == [1]
    with pytest.raises(FileNotFoundError, match="1 of 2 shards"):
        merge_shards(tmp_path / "multi")
    assert generate_shards(pipe, tmp_path / "multi", plan, 3, "prologue-B-B", process_index=0, num_processes=2) == [0]
    with np.load(merge_shards(tmp_path / "multi")) as data:
        assert np.array_equal(data["arr_0"], images) and np.array_equal(data["arr_1"], labels)

    # resume: only the missing shard is sampled again, with identical content
    (tmp_path / "multi" / "shards" / "shard_00001.npz").unlink()
    assert generate_shards(pipe, tmp_path / "multi", plan, 3, "prologue-B-B") == [1]
    assert generate_shards(pipe, tmp_path / "multi", plan, 3, "prologue-B-B") == []
    with np.load(merge_shards(tmp_path / "multi")) as data:
        assert np.array_equal(data["arr_0"], images)
    # a different plan in the same folder is refused
    with pytest.raises(ValueError, match="different sampling run"):
        generate_shards(pipe, tmp_path / "multi", SamplingPlan(3, 2, 4, 8), 3, "prologue-B-B")
    assert json.loads((tmp_path / "multi" / "plan.json").read_text())["seed"] == 7


def test_generation_metrics_with_stand_in_extractors(tmp_path):
    real = random_images(40, seed=5)
    far = random_images(40, seed=6, low=200, high=256)  # much brighter: outside the real manifold
    results = compute_generation_metrics(
        real, real, inception=StatsExtractor(), effnet=StatsExtractor(), batch_size=16, inception_score_splits=4
    )
    assert set(results) == {"fid", "inception_score", "inception_score_std", "precision", "recall", FD_EFFNET_LITE0,
                            "num_samples"}
    assert abs(results["fid"]) < 1e-8 and abs(results[FD_EFFNET_LITE0]) < 1e-8
    assert results["precision"] == 1.0 and results["recall"] == 1.0
    assert results["inception_score"] == pytest.approx(1.0)  # identical predictions: KL = 0 in every split
    shifted = compute_generation_metrics(far, real, metrics=("fid", "precision_recall"), inception=StatsExtractor())
    assert shifted["fid"] > 0.01 and shifted["precision"] == 0.0
    # FID against the mu / sigma stored in an ADM reference batch
    stats = feature_statistics(StatsExtractor()(torch.from_numpy(real).permute(0, 3, 1, 2))["features"])
    np.savez(tmp_path / "ref.npz", arr_0=real, mu=stats["mu"], sigma=stats["sigma"])
    stored = compute_generation_metrics(
        far, tmp_path / "ref.npz", metrics=("fid",), inception=StatsExtractor(), use_reference_statistics=True
    )
    assert stored["fid"] == pytest.approx(shifted["fid"], rel=1e-9)
    with pytest.raises(ValueError, match="subset of"):
        compute_generation_metrics(real, real, metrics=("kid",))


def test_cfg_sweep_runs_each_scale_once(pipe, tmp_path):
    from prologue_hf.pipelines import SamplingParams

    base = SamplingParams.from_preset("prologue-B-B")
    assert with_visual_guidance_scale(base, 2.0).visual_guidance.scale == 2.0
    assert with_visual_guidance_scale(base, 2.0).prologue_guidance == base.prologue_guidance
    calls = []

    def metric_fn(npz):
        calls.append(npz)
        with np.load(npz) as data:
            return {"mean_pixel": float(data["arr_0"].mean())}

    kwargs = dict(num_classes=3, images_per_class=1, shard_size=3, batch_size=3, seed=0)
    results = run_cfg_sweep(pipe, [1.0, 3.0], tmp_path, metric_fn, sampling=base, **kwargs)
    assert [r["scale"] for r in results] == [1.0, 3.0] and len(calls) == 2
    assert json.loads((tmp_path / "cfg_sweep.json").read_text()) == results
    plan = json.loads((tmp_path / "scale_3" / "plan.json").read_text())
    assert plan["sampling"]["visual_guidance"]["scale"] == 3.0
    assert run_cfg_sweep(pipe, [1.0, 3.0], tmp_path, metric_fn, sampling=base, **kwargs) == results
    assert len(calls) == 2  # finished scales are not sampled or scored again


# ------------------------------------------------------------------------------------------------ reconstruction
def test_evaluate_reconstruction_values_usage_and_grid(tmp_path):
    tokenizer = tiny_tokenizer()
    images = torch.from_numpy(random_images(6, seed=8)).permute(0, 3, 1, 2)
    batches = [{"pixel_values": images[:4]}, {"pixel_values": images[4:]}]
    results = evaluate_reconstruction(
        tokenizer, batches, extractors={"rfd_stats": StatsExtractor()}, grid_path=tmp_path / "grid.png", grid_columns=3
    )
    pixels = tokenizer.preprocess(images)
    encoded = tokenizer.encode(pixels)
    recon = tokenizer.postprocess(tokenizer.decode(encoded.visual_ids).pixel_values, "uint8")
    mse = (recon.double() - images.double()).pow(2).mean(dim=(1, 2, 3))
    assert results.num_images == 6
    assert results.psnr == pytest.approx(float((10 * torch.log10(255.0**2 / mse)).mean()), rel=1e-9)
    assert results.ssim == pytest.approx(float(ssim(recon, images).mean()), rel=1e-6)
    expected_fd = frechet_distance(StatsExtractor()(images)["features"], StatsExtractor()(recon)["features"])
    assert results.frechet["rfd_stats"] == pytest.approx(expected_fd, rel=1e-6)
    assert results.codebook_usage["visual"] == tokenizer.codebook_usage(encoded.visual_ids, "visual")
    assert results.codebook_usage["prologue"] == tokenizer.codebook_usage(encoded.prologue_ids, "prologue")
    import PIL.Image

    grid = np.asarray(PIL.Image.open(tmp_path / "grid.png"))
    margin = grid.shape[1] - (3 * 34 - 2)  # 3 columns of 32px with 2px gaps, row labels on the left
    assert grid.shape[0] == 2 * 34 - 2 and margin > 0
    assert np.array_equal(grid[:32, margin + 34 : margin + 66], images[1].permute(1, 2, 0).numpy())  # originals on top
    assert np.array_equal(grid[34:, margin : margin + 32], recon[0].permute(1, 2, 0).numpy())  # reconstructions below
    assert evaluate_reconstruction(tokenizer, batches, max_images=5).num_images == 5
    assert json.dumps(results.to_dict())


# ------------------------------------------------------------------------------------------------ linear probe
def test_linear_probe_separable_synthetic_features():
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=generator) * 3
    labels = torch.arange(5).repeat(200)
    features = centers[labels] + torch.randn(1000, 16, generator=generator)
    result = train_linear_probe(features[:500], labels[:500], features[500:], labels[500:], epochs=30, batch_size=100)
    assert result.top1 > 95.0 and result.top5 == 100.0 and result.train_top1 > 95.0
    again = train_linear_probe(features[:500], labels[:500], features[500:], labels[500:], epochs=30, batch_size=100)
    assert torch.equal(again.probe.linear.weight, result.probe.linear.weight)  # deterministic for a seed
    shuffled = labels[torch.randperm(1000, generator=generator)]  # no signal: about chance (20 %) held out
    chance = train_linear_probe(features[:500], shuffled[:500], features[500:], shuffled[500:], epochs=10)
    assert chance.top1 < 35.0
    with pytest.raises(ValueError, match="train_labels"):
        train_linear_probe(features, labels[:10])


def test_pooled_token_features_prologue_and_first_visual_tokens():
    tokenizer = tiny_tokenizer()
    pixels = tokenizer.preprocess(torch.from_numpy(random_images(3, seed=9)).permute(0, 3, 1, 2))
    encoded = tokenizer.encode(pixels)
    prologue = pooled_token_features(tokenizer, pixels)
    assert torch.allclose(prologue, encoded.prologue_quantized.mean(1))
    visual = pooled_token_features(tokenizer, pixels, source="visual", num_tokens=4, representation="features")
    assert torch.allclose(visual, encoded.visual_features[:, :4].mean(1))  # the first grid row, raster order
    hidden = pooled_token_features(tokenizer, pixels, representation="hidden")
    assert hidden.shape == (3, 64) and torch.allclose(hidden, encoded.encoder_hidden_states[:, 16:].mean(1))
    feats, labels = extract_probe_features(tokenizer, [(pixels[:2], [1, 2]), (pixels[2:], [0])])
    assert torch.allclose(feats, prologue, atol=1e-6) and labels.tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="num_tokens"):
        pooled_token_features(tokenizer, pixels, source="visual", num_tokens=17)
    with pytest.raises(ValueError, match="source"):
        pooled_token_features(tokenizer, pixels, source="text")
    baseline = tiny_tokenizer(num_prologue_tokens=0, tokenizer_type="2d")
    with pytest.raises(ValueError, match="prologue tokens"):
        pooled_token_features(baseline, pixels)


# ------------------------------------------------------------------------------------------------ evaluate modules
def test_shipped_evaluate_modules_load_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert available_metrics() == ["fd_effnet_lite0", "inception_metrics", "psnr_ssim"]
    psnr_metric = load_metric("psnr_ssim")
    a = np.zeros((8, 8, 3), np.uint8)
    out = psnr_metric.compute(predictions=[a + 1, a + 2], references=[a, a])
    assert out["psnr"] == pytest.approx((20 * math.log10(255) + 10 * math.log10(255**2 / 4)) / 2, rel=1e-9)
    fd = load_metric("fd_effnet_lite0")
    images = list(random_images(4, seed=10))
    assert abs(fd.compute(predictions=images, reference_images=images)["fd_effnet_lite0"]) < 1e-3
    inception = load_metric("inception_metrics")
    with pytest.raises(FileNotFoundError, match="InceptionV3 weights"):
        inception.compute(predictions=images, reference_images=images)
    with pytest.raises(ValueError, match="unknown metric"):
        load_metric("accuracy")


def test_random_effnet_extractor_is_usable_without_the_weights_package():
    torch.manual_seed(0)
    extractor = EfficientNetLite0Features(EfficientNetLite0())
    assert extractor(random_images(2, size=16))["features"].shape == (2, 1280)


# --------------------------------------------------------------------------------- examples/evaluate_model.py
def _image_folder(root, splits=("train", "validation"), per_class=3):
    import PIL.Image

    for s, split in enumerate(splits):
        for c, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, image in enumerate(random_images(per_class, seed=100 + 10 * s + c, low=40 * c, high=200 + 40 * c)):
                PIL.Image.fromarray(image).save(folder / f"{i}.png")
    return root


def test_example_sample_and_metrics(pipe, tmp_path, capsys, load_example):
    example = load_example("evaluate_model")
    pipe.save_pretrained(tmp_path / "pipe")
    args = ["--images-per-class", "2", "--shard-size", "3", "--batch-size", "3", "--seed", "5"]
    example.main(["sample", "--pipeline", str(tmp_path / "pipe"), "--output-dir", str(tmp_path / "cli"), *args])
    expected = sample_to_npz(pipe, tmp_path / "lib", images_per_class=2, shard_size=3, batch_size=3, seed=5,
                             sampling="prologue-B-B")
    with np.load(tmp_path / "cli" / "samples.npz") as cli, np.load(expected) as lib:
        assert cli["arr_0"].shape == (6, 32, 32, 3) and np.array_equal(cli["arr_0"], lib["arr_0"])
    capsys.readouterr()
    samples = str(tmp_path / "cli" / "samples.npz")
    example.main(["metrics", "--samples", samples, "--reference", samples, "--output", str(tmp_path / "m.json")])
    results = json.loads((tmp_path / "m.json").read_text())
    assert set(results) == {FD_EFFNET_LITE0, "num_samples"} and abs(results[FD_EFFNET_LITE0]) < 1e-3
    assert json.loads(capsys.readouterr().out) == results
    with pytest.raises(FileNotFoundError, match="InceptionV3 weights"):
        example.main(["metrics", "--samples", samples, "--reference", samples, "--metrics", "fid"])


def test_example_reconstruction_and_probe(tmp_path, load_example):
    example = load_example("evaluate_model")
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tok")
    data = _image_folder(tmp_path / "data")
    common = ["--tokenizer", str(tmp_path / "tok"), "--data", str(data), "--num-workers", "0", "--device", "cpu"]
    rec_args = ["--output-dir", str(tmp_path / "rec"), "--batch-size", "4", "--no-rfd-effnet-lite0"]
    example.main(["reconstruction", *common, *rec_args])
    results = json.loads((tmp_path / "rec" / "reconstruction.json").read_text())
    assert results["num_images"] == 6 and (tmp_path / "rec" / "reconstructions.png").exists()
    import PIL.Image

    from prologue_hf.evaluation.dataloader import evaluation_dataloader

    loader = evaluation_dataloader(str(data), "validation", 32, 4)
    images = torch.cat([b["pixel_values"] for b in loader])
    on_disk = [np.asarray(PIL.Image.open(p)) for p in sorted((data / "validation").rglob("*.png"))]
    assert np.array_equal(  # 32 px images: the center crop is the identity
        tokenizer.postprocess(images, "uint8").permute(0, 2, 3, 1).numpy(), np.stack(on_disk)
    )
    expected = evaluate_reconstruction(tokenizer, [images], compute_ssim=True)
    assert results["psnr"] == pytest.approx(expected.psnr, rel=1e-9)
    assert results["codebook_usage"] == expected.codebook_usage and results["frechet"] == {}

    example.main(["probe", *common, "--output-dir", str(tmp_path / "probe"), "--epochs", "5"])
    probe = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert probe["num_train"] == 6 and probe["num_eval"] == 6 and probe["top5"] == 100.0  # 2 classes
    feats, labels = extract_probe_features(tokenizer, evaluation_dataloader(str(data), "train", 32, 64))
    eval_feats, eval_labels = extract_probe_features(tokenizer, loader)
    direct = train_linear_probe(feats, labels, eval_feats, eval_labels, epochs=5)
    assert probe["top1"] == direct.top1
