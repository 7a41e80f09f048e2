"""Tests of prologue_hf.training.image_data: dataset loading, RGB conversion, crops and the corrupt-image-safe collator."""

import io
import logging

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from prologue_hf.training.image_data import (
    ImageTrainingCollator,
    ImageTransform,
    load_image_dataset,
    prepare_image_dataset,
    to_rgb,
)


def _png_bytes(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_imagefolder(root, per_class=3, size=(20, 16), corrupt=0):
    """Two class folders of small solid-colour PNGs (class 0 red-ish, class 1 blue-ish) plus ``corrupt`` bad files."""
    for c, name in enumerate(["cat", "dog"]):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            color = (200 + 10 * i, 0, 0) if c == 0 else (0, 0, 200 + 10 * i)
            PIL.Image.new("RGB", size, color).save(folder / f"{i}.png")
    for i in range(corrupt):
        (root / "cat" / f"broken_{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return root


# ------------------------------------------------------------------------------------------------ to_rgb
def test_to_rgb_converts_modes_and_rejects_corrupt(tmp_path):
    grey = PIL.Image.new("L", (4, 3), 77)
    assert to_rgb(grey).mode == "RGB" and np.asarray(to_rgb(grey))[0, 0].tolist() == [77, 77, 77]

    rgba = PIL.Image.new("RGBA", (2, 2), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent -> white background
    out = np.asarray(to_rgb(rgba))
    assert out[0, 0].tolist() == [255, 255, 255] and out[1, 1].tolist() == [10, 20, 30]

    cmyk = PIL.Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red in CMYK
    assert np.asarray(to_rgb(cmyk))[0, 0].tolist() == [255, 0, 0]

    palette = PIL.Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    assert np.asarray(to_rgb(palette))[0, 0].tolist() == [0, 255, 0]

    sixteen = PIL.Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert np.asarray(to_rgb(sixteen))[0, 0].tolist() == [255, 255, 255]

    path = tmp_path / "x.png"
    PIL.Image.new("RGB", (3, 3), (1, 2, 3)).save(path)
    for source in (str(path), path.read_bytes(), {"bytes": None, "path": str(path)}, {"bytes": path.read_bytes()}):
        assert np.asarray(to_rgb(source))[0, 0].tolist() == [1, 2, 3]

    truncated = _png_bytes(PIL.Image.new("RGB", (64, 64), (5, 5, 5)))[:60]
    assert to_rgb(b"not an image") is None
    assert to_rgb(truncated) is None
    assert to_rgb(None) is None
    assert to_rgb(str(tmp_path / "missing.png")) is None


# ------------------------------------------------------------------------------------------------ transform
def test_image_transform_values_center_crop_and_flip():
    # 40x20 image: left half black, right half white. Shorter side 20 -> 16: resized to 32x16, centre crop 16x16.
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, 20:] = 255
    image = PIL.Image.fromarray(array)
    out = ImageTransform(16, random_crop=False, hflip=False)(image)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    # normalisation x / 127.5 - 1: black -> -1, white -> +1 (exact at the far columns)
    assert torch.equal(out[:, :, 0], torch.full((3, 16), -1.0))
    assert torch.equal(out[:, :, -1], torch.full((3, 16), 1.0))
    assert out.min() >= -1 and out.max() <= 1
    flipped = ImageTransform(16, random_crop=False, hflip=True)
    torch.manual_seed(0)
    results = {tuple(flipped(image)[0, 0, [0, -1]].tolist()) for _ in range(20)}
    assert results == {(-1.0, 1.0), (1.0, -1.0)}  # both orientations occur


def test_image_transform_random_crop_is_seeded_and_covers_offsets():
    array = np.arange(30 * 10, dtype=np.uint8).reshape(10, 30)  # width 30, height 10 -> crop 10x10 from 30x10
    image = PIL.Image.fromarray(np.stack([array] * 3, -1))
    transform = ImageTransform(10, random_crop=True, hflip=False)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(transform(image, g1), transform(image, g2))
    offsets = set()
    for seed in range(200):
        crop = transform(image, torch.Generator().manual_seed(seed))
        first = int(round((float(crop[0, 0, 0]) + 1) * 127.5))
        offsets.add(first)  # top-left pixel value == its column in the source image (row 0)
    assert offsets == set(range(21))  # every horizontal offset 0..20 occurs


def test_image_transform_rejects_bad_input():
    with pytest.raises(ValueError, match="image_size"):
        ImageTransform(0)
    with pytest.raises(ValueError, match="PIL image"):
        ImageTransform(8)(torch.zeros(3, 8, 8))


# ------------------------------------------------------------------------------------------------ loading
def test_load_imagefolder_standardises_columns(tmp_path):
    root = _write_imagefolder(tmp_path / "images")
    ds = load_image_dataset(str(root), cache_dir=str(tmp_path / "cache"))
    assert ds.column_names == ["image", "label"]
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["label"].names == ["cat", "dog"]
    assert len(ds) == 6 and sorted(ds["label"]) == [0, 0, 0, 1, 1, 1]
    first = ds[0]
    assert isinstance(first["image"], PIL.Image.Image) and first["image"].size == (20, 16)


def test_load_streaming_imagefolder(tmp_path):
    root = _write_imagefolder(tmp_path / "images", per_class=2)
    ds = load_image_dataset(str(root), streaming=True, cache_dir=str(tmp_path / "cache"))
    assert isinstance(ds, datasets.IterableDataset)
    rows = list(ds)
    assert len(rows) == 4 and sorted(r["label"] for r in rows) == [0, 0, 1, 1]
    assert set(rows[0]) == {"image", "label"}


def test_load_saved_to_disk_with_custom_columns(tmp_path):
    images = [PIL.Image.new("RGB", (8, 8), (i, i, i)) for i in range(4)]
    raw = datasets.Dataset.from_dict(
        {"img": images, "cls": [3, 1, 4, 1], "caption": ["a", "b", "c", "d"]},
        features=datasets.Features({"img": datasets.Image(), "cls": datasets.Value("int64"), "caption": datasets.Value("string")}),
    )
    raw.save_to_disk(str(tmp_path / "single"))
    ds = load_image_dataset(str(tmp_path / "single"))
    assert ds.column_names == ["image", "label"] and ds["label"] == [3, 1, 4, 1]
    datasets.DatasetDict({"train": raw, "validation": raw.select([0])}).save_to_disk(str(tmp_path / "dict"))
    val = load_image_dataset(str(tmp_path / "dict"), split="validation")
    assert len(val) == 1 and val[0]["label"] == 3
    streamed = load_image_dataset(str(tmp_path / "single"), streaming=True)
    assert [r["label"] for r in streamed] == [3, 1, 4, 1]
    with pytest.raises(ValueError, match="split 'test'"):
        load_image_dataset(str(tmp_path / "dict"), split="test")
    with pytest.raises(ValueError, match="column 'nope'"):
        load_image_dataset(str(tmp_path / "single"), label_column="nope")


def test_missing_label_column(tmp_path):
    raw = datasets.Dataset.from_dict({"image": [PIL.Image.new("RGB", (8, 8))] * 2})
    raw.save_to_disk(str(tmp_path / "nolabel"))
    with pytest.raises(ValueError, match="no label column"):
        load_image_dataset(str(tmp_path / "nolabel"))
    ds = load_image_dataset(str(tmp_path / "nolabel"), allow_missing_label=True)
    assert ds["label"] == [-1, -1]


def test_bad_paths_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="non-empty string"):
        load_image_dataset("")
    with pytest.raises(ValueError, match="not a directory"):
        load_image_dataset(str(tmp_path / "does-not-exist"))


# ------------------------------------------------------------------------------------------------ collator
def test_collator_skips_corrupt_images_with_counted_warning(tmp_path, caplog):
    root = _write_imagefolder(tmp_path / "images", per_class=2, corrupt=2)
    ds = prepare_image_dataset(load_image_dataset(str(root), cache_dir=str(tmp_path / "cache")))
    assert len(ds) == 6
    collator = ImageTrainingCollator(ImageTransform(8, random_crop=False, hflip=False))
    loader = torch.utils.data.DataLoader(ds, batch_size=6, collate_fn=collator, shuffle=False)
    with caplog.at_level(logging.WARNING, logger="prologue_hf"):
        batches = list(loader)
    assert len(batches) == 1
    batch = batches[0]
    assert batch["pixel_values"].shape == (4, 3, 8, 8) and batch["labels"].tolist().count(1) == 2
    assert collator.num_skipped == 2 and collator.num_seen == 6
    messages = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(messages) == 2 and "2 of" in messages[-1]
    # red images of class "cat" map to (~+0.6, -1, -1) after normalisation: values are real pixels, not zeros
    cat = batch["pixel_values"][batch["labels"] == 0]
    assert torch.allclose(cat[:, 1], torch.full_like(cat[:, 1], -1.0)) and bool((cat[:, 0] > 0.5).all())


def test_collator_all_corrupt_batch_raises():
    collator = ImageTrainingCollator(ImageTransform(8))
    with pytest.raises(RuntimeError, match="every image"):
        collator([{"image": {"bytes": b"junk", "path": None}, "label": 0}])
    good = collator([{"image": PIL.Image.new("L", (9, 9), 255), "label": None}])
    assert good["labels"].tolist() == [-1] and torch.equal(good["pixel_values"], torch.ones(1, 3, 8, 8))


def test_seeded_collator_augmentation_depends_only_on_seed_epoch_index():
    image = PIL.Image.fromarray(np.arange(40 * 24 * 3, dtype=np.uint32).reshape(24, 40, 3).astype(np.uint8))
    collator = ImageTrainingCollator(ImageTransform(16, random_crop=True, hflip=True), seed=7)
    examples = [{"image": image, "label": 0, "index": i} for i in range(6)]
    torch.manual_seed(0)
    whole = collator(examples)["pixel_values"]
    torch.manual_seed(123)  # the global generator plays no part
    alone = torch.cat([collator([example])["pixel_values"] for example in reversed(examples)]).flip(0)
    assert torch.equal(whole, alone)
    assert len({tuple(x.flatten()[:8].tolist()) for x in whole}) > 1  # different indices, different crops
    collator.set_epoch(1)
    assert not torch.equal(collator(examples)["pixel_values"], whole)  # a new epoch re-draws
    collator.set_epoch(0)
    assert torch.equal(collator(examples)["pixel_values"], whole)


def test_load_training_images_adds_index(tmp_path):
    from prologue_hf.training.image_data import ImageDataArguments, load_training_images

    root = _write_imagefolder(tmp_path / "images", per_class=2)
    ds = load_training_images(ImageDataArguments(train_data=str(root), cache_dir=str(tmp_path / "cache"), max_train_samples=3))
    assert ds.column_names == ["image", "label", "index"] and ds["index"] == [0, 1, 2]
    assert ds.features["image"].decode is False
