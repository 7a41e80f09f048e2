"""Stage-2 pretokenization: ten-crop views, tokenizer identity, shards / resume / merge, int16 storage, refusals."""

import json
import os

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from prologue_hf.identity import tokenizer_identity
from prologue_hf.testing import tiny_ar_config, tiny_tokenizer, tiny_tokenizer_config
from prologue_hf.training.image_data import load_image_dataset
from prologue_hf.training.pretokenize import (
    PRETOKENIZED_INFO_FILE,
    SHARDS_DIR,
    PretokenizeConfig,
    PretokenizedInfo,
    TenCropViews,
    encode_views,
    ids_dtype,
    load_pretokenized_dataset,
    pretokenize_dataset,
)

CLASSES = ("ant", "bee", "cow")


def make_image_folder(root, per_class=3, corrupt=True, seed=0):
    """A tiny imagefolder: random RGB images of assorted sizes (one greyscale), plus one corrupt file."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            shape = (36 + 3 * i + c, 40 + 2 * i)
            if c == 1 and i == 0:
                PIL.Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), "L").save(root / name / f"{i}.png")
            else:
                PIL.Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    if corrupt:
        (root / "bee" / "broken.png").write_bytes(b"\x89PNG this is not an image")
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(seed=0)


def run(tokenizer, source, out, process_index=None, num_processes=None, **kwargs):
    config = PretokenizeConfig(str(out), **{"batch_size": 2, "shard_size": 4, **kwargs})
    return pretokenize_dataset(
        tokenizer, source, config, source="folder", split="train", process_index=process_index, num_processes=num_processes
    )


# ------------------------------------------------------------------------------------------- views
def test_ten_crop_positions_and_flips():
    # a 35x35 image is already the 1.1 * 32 square: no resize, so every crop is an exact slice of the coordinates
    rows, cols = np.meshgrid(np.arange(35), np.arange(35), indexing="ij")
    image = PIL.Image.fromarray(np.stack([rows * 7, cols * 7, np.zeros_like(rows)], -1).astype(np.uint8))
    views = TenCropViews(32, crop_range=1.1)
    out = views(image)
    assert out.shape == (10, 3, 32, 32) and views.num_views == 10
    pixels = ((out + 1.0) * 127.5).round().long()  # back to uint8 values
    offsets = [(0, 0), (0, 3), (3, 0), (3, 3), (2, 2)]  # TL, TR, BL, BR, centre (round(1.5) = 2)
    assert views.offsets() == offsets
    for v, (top, left) in enumerate(offsets):
        assert pixels[v, 0, 0, 0] == top * 7 and pixels[v, 1, 0, 0] == left * 7
        assert pixels[v, 0, 31, 0] == (top + 31) * 7 and pixels[v, 1, 0, 31] == (left + 31) * 7
        torch.testing.assert_close(out[v + 5], out[v].flip(-1), rtol=0, atol=0)  # views 5..9 are the mirrors
    centre_only = TenCropViews(32, crop_range=1.1, crops="center", hflip=False)(image)
    torch.testing.assert_close(centre_only[0], out[4], rtol=0, atol=0)
    assert TenCropViews(32, crops="center", hflip=True).num_views == 2


@pytest.mark.parametrize(
    "kwargs", [dict(crops="seven"), dict(crop_range=0.9), dict(image_size=0)], ids=["crops", "range", "size"]
)
def test_views_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TenCropViews(**{"image_size": 32, **kwargs})


# ------------------------------------------------------------------------------------------- identity
def test_tokenizer_identity_tracks_weights_not_paths(tmp_path):
    a, b = tiny_tokenizer(seed=0), tiny_tokenizer(seed=0)
    assert tokenizer_identity(a) == tokenizer_identity(b)
    b.config.name_or_path = "/somewhere/else"
    assert tokenizer_identity(a) == tokenizer_identity(b)
    with torch.no_grad():  # one weight moved by one part in a million
        next(b.parameters()).view(-1)[0] *= 1 + 1e-6
    assert tokenizer_identity(a) != tokenizer_identity(b)
    a.save_pretrained(tmp_path / "tok")
    reloaded = type(a).from_pretrained(tmp_path / "tok")
    assert tokenizer_identity(reloaded) == tokenizer_identity(a)
    assert tokenizer_identity(a.to(torch.bfloat16)) != tokenizer_identity(reloaded)  # a cast is another tokenizer


def test_ids_dtype():
    assert ids_dtype(16384) == "int16" and ids_dtype(32768) == "int16"
    assert ids_dtype(32769) == "int32" and ids_dtype(65536) == "int32"


# ------------------------------------------------------------------------------------------- round trip
def test_pretokenize_values_dtypes_and_metadata(image_folder, tokenizer, tmp_path):
    source = load_image_dataset(str(image_folder))
    ds = run(tokenizer, source, tmp_path / "ids")
    info = PretokenizedInfo.from_dataset(ds)
    # 10 images of which one is corrupt: 9 x 10 views
    assert len(ds) == 90 and info.num_images == 9 and info.num_skipped == 1
    assert info.tokenizer_identity == tokenizer_identity(tokenizer)
    assert (info.visual_vocab_size, info.prologue_vocab_size, info.num_prologue_tokens, info.num_visual_tokens) == (
        64,
        16,
        4,
        16,
    )
    assert info.num_classes == 3 and info.class_names == list(CLASSES) and info.crops == "five" and info.hflip
    assert ds.features["visual_ids"] == datasets.List(datasets.Value("int16"), length=16)
    assert ds.features["prologue_ids"] == datasets.List(datasets.Value("int16"), length=4)
    assert ds.features["crop_index"] == datasets.Value("int8")
    # stored int16 stays int16 through load_pretokenized_dataset (a plain numpy format would give int64)
    reloaded = load_pretokenized_dataset(str(tmp_path / "ids"))
    assert reloaded[:5]["visual_ids"].dtype == np.int16 and reloaded[0]["prologue_ids"].dtype == np.int16
    assert datasets.load_from_disk(str(tmp_path / "ids")).with_format("numpy")[:2]["visual_ids"].dtype == np.int64
    assert PretokenizedInfo.from_dataset(reloaded) == info
    with open(tmp_path / "ids" / PRETOKENIZED_INFO_FILE) as handle:
        assert PretokenizedInfo.from_json(handle.read()) == info
    assert not (tmp_path / "ids" / SHARDS_DIR).exists()  # shards are removed after the merge

    # values: every row equals a direct encode of the same view of the same source image
    views = TenCropViews(32)
    plain = source.cast_column("image", datasets.Image())
    for image_index in sorted(set(reloaded[:]["image_index"].tolist()))[:4]:
        example = plain[int(image_index)]
        prologue, visual = encode_views(tokenizer, views(example["image"].convert("RGB")))
        rows = reloaded.select(np.nonzero(reloaded[:]["image_index"] == image_index)[0])
        assert rows[:]["crop_index"].tolist() == list(range(10))
        np.testing.assert_array_equal(rows[:]["visual_ids"], visual.numpy())
        np.testing.assert_array_equal(rows[:]["prologue_ids"], prologue.numpy())
        assert set(rows[:]["label"].tolist()) == {example["label"]}
    paths = [image["path"] for image in source.cast_column("image", datasets.Image(decode=False))[:]["image"]]
    broken = [i for i, path in enumerate(paths) if "broken" in path]
    assert len(broken) == 1 and broken[0] not in set(reloaded[:]["image_index"].tolist())


def test_streaming_source_gives_the_same_rows(image_folder, tokenizer, tmp_path):
    mapped = run(tokenizer, load_image_dataset(str(image_folder)), tmp_path / "map")
    streamed = run(tokenizer, load_image_dataset(str(image_folder), streaming=True), tmp_path / "stream")
    assert len(streamed) == len(mapped)
    for column in ("prologue_ids", "visual_ids", "label", "crop_index", "image_index"):
        np.testing.assert_array_equal(streamed[:][column], mapped[:][column])
    assert PretokenizedInfo.from_dataset(streamed).num_skipped == 1


# ------------------------------------------------------------------------------------------- shards, resume
def test_two_process_slices_resume_and_merge(image_folder, tokenizer, tmp_path):
    source = load_image_dataset(str(image_folder))
    reference = run(tokenizer, source, tmp_path / "one")
    out = tmp_path / "two"
    # process 0 of 2 writes its shards (0 and 2 of 3) and cannot merge yet
    assert run(tokenizer, source, out, process_index=0, num_processes=2) is None
    shards = sorted(p.name for p in (out / SHARDS_DIR).iterdir() if p.is_dir())
    assert shards == ["shard-000000-of-000003", "shard-000002-of-000003"]
    stamps = {name: os.path.getmtime(out / SHARDS_DIR / name / "shard_stats.json") for name in shards}
    # a restarted process 0 skips its finished shards
    assert run(tokenizer, source, out, process_index=0, num_processes=2) is None
    assert stamps == {name: os.path.getmtime(out / SHARDS_DIR / name / "shard_stats.json") for name in shards}
    # process 1 writes shard 1; process 0 (the merger) then finds every shard and merges in source order
    assert run(tokenizer, source, out, process_index=1, num_processes=2) is None
    merged = run(tokenizer, source, out, process_index=0, num_processes=2)
    for column in ("prologue_ids", "visual_ids", "label", "crop_index", "image_index"):
        np.testing.assert_array_equal(merged[:][column], reference[:][column])
    assert PretokenizedInfo.from_dataset(merged) == PretokenizedInfo.from_dataset(reference)
    # a finished dataset is returned as it is by a rerun of the same settings
    again = run(tokenizer, source, out)
    np.testing.assert_array_equal(again[:]["visual_ids"], reference[:]["visual_ids"])


def test_changed_settings_are_refused(image_folder, tokenizer, tmp_path):
    source = load_image_dataset(str(image_folder))
    out = tmp_path / "ids"
    assert run(tokenizer, source, out, process_index=0, num_processes=2) is None
    with pytest.raises(ValueError, match="shard_size"):
        run(tokenizer, source, out, shard_size=5, process_index=0, num_processes=2)
    with pytest.raises(ValueError, match="tokenizer_identity"):
        run(tiny_tokenizer(seed=1), source, out, process_index=0, num_processes=2)
    run(tokenizer, source, out, overwrite=True)
    with pytest.raises(ValueError, match="other settings"):
        run(tokenizer, source, out, hflip=False)
    assert len(run(tokenizer, source, out, hflip=False, crops="center", overwrite=True)) == 9


def test_bad_inputs(tokenizer, tmp_path):
    no_label = datasets.Dataset.from_dict({"image": [PIL.Image.new("RGB", (32, 32))]})
    with pytest.raises(ValueError, match="'label' column"):
        run(tokenizer, no_label, tmp_path / "x")
    with pytest.raises(ValueError, match="batch_size"):
        PretokenizeConfig(str(tmp_path), batch_size=0)
    with pytest.raises(ValueError, match="not a pretokenized"):
        datasets.Dataset.from_dict({"a": [1]}).save_to_disk(str(tmp_path / "plain"))
        load_pretokenized_dataset(str(tmp_path / "plain"))


# ------------------------------------------------------------------------------------------- checks
def test_info_checks_refuse_mismatched_ar_configs(tokenizer):
    info = PretokenizedInfo.from_tokenizer(tokenizer, num_classes=3)
    good = tiny_ar_config(num_classes=3)
    info.check_ar_config(good)
    wrong_vocab = tiny_ar_config(tiny_tokenizer_config(visual_codebook_size=128), num_classes=3)
    with pytest.raises(ValueError, match=r"dataset.s tokenizer sha256:.*visual_vocab_size: AR 128 vs tokenizer 64"):
        info.check_ar_config(wrong_vocab)
    with pytest.raises(ValueError, match="num_prologue_tokens"):
        info.check_ar_config(tiny_ar_config(tiny_tokenizer_config(num_prologue_tokens=8), num_classes=3))
    with pytest.raises(ValueError, match="num_classes=2"):
        info.check_ar_config(tiny_ar_config(num_classes=2))
    other = tiny_ar_config(num_classes=3, tokenizer_identity="sha256:0123")
    with pytest.raises(ValueError, match="tokenizer identity mismatch"):
        info.check_ar_config(other)
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        info.check_tokenizer(tiny_tokenizer(seed=3))
    info.check_tokenizer(tiny_tokenizer(seed=0))
    kwargs = info.ar_config_kwargs()
    assert kwargs["tokenizer_identity"] == info.tokenizer_identity and kwargs["num_classes"] == 3
    assert json.loads(info.to_json())["format"] == "prologue-pretokenized"
    with pytest.raises(ValueError, match="not a prologue-pretokenized record"):
        PretokenizedInfo.from_json(json.dumps({"format": "other"}))


def test_2d_baseline_tokenizer_without_prologue(image_folder, tmp_path):
    from prologue_hf.training.trainer_ar import PrologueARDataCollator

    tokenizer = tiny_tokenizer(seed=0, num_prologue_tokens=0)
    ds = run(tokenizer, load_image_dataset(str(image_folder)), tmp_path / "ids", crops="center", hflip=False)
    info = PretokenizedInfo.from_dataset(ds)
    assert (info.num_prologue_tokens, info.prologue_vocab_size, len(ds)) == (0, 0, 9)
    assert ds[0]["prologue_ids"].shape == (0,) and ds[0]["visual_ids"].shape == (16,)
    config = tiny_ar_config(tokenizer.config, num_classes=3, **{"tokenizer_identity": info.tokenizer_identity})
    info.check_ar_config(config)
    batch = PrologueARDataCollator(config.vocabulary)([ds[i] for i in range(4)])
    assert "prologue_ids" not in batch
    assert config.vocabulary.build_sequence(batch["class_labels"], batch["visual_ids"]).shape == (4, 17)


# ------------------------------------------------------------------------------------------- undecodable shards
def test_a_shard_of_undecodable_images_merges_as_empty_and_is_counted(tokenizer, tmp_path, log_records):
    import logging

    from prologue_hf.training.pretokenize import merge_shards

    folder = make_image_folder(tmp_path / "images", corrupt=False)
    for path in (folder / "cow").iterdir():  # the 3 images of the last shard (shard_size 3)
        path.write_bytes(b"\x89PNG not an image")
    source = load_image_dataset(str(folder))
    with log_records("prologue_hf.training.pretokenize.merge") as records:
        ds = run(tokenizer, source, tmp_path / "ids", shard_size=3, keep_shards=True)
    info = PretokenizedInfo.from_dataset(ds)
    assert (len(ds), info.num_images, info.num_skipped) == (60, 6, 3)
    assert sorted(set(ds[:]["label"].tolist())) == [0, 1]
    summary = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert summary == ["3 of 9 source images were undecodable and skipped; shards without a decodable image: "
                       "shard-000002-of-000003"]  # fmt: skip
    # an empty shard written before empty shards got an arrow file (the IndexError of every rerun) merges too
    shards = tmp_path / "ids" / SHARDS_DIR
    for arrow in (shards / "shard-000002-of-000003").glob("*.arrow"):
        arrow.unlink()
    names = [f"shard-00000{i}-of-000003" for i in range(3)]
    remerged = merge_shards(str(tmp_path / "again"), str(shards), names, info, keep_shards=True)
    np.testing.assert_array_equal(remerged[:]["visual_ids"], ds[:]["visual_ids"])
    # nothing decodable at all: a clear error, not an empty dataset
    for path in folder.rglob("*.png"):
        path.write_bytes(b"\x89PNG not an image")
    with pytest.raises(ValueError, match="all 9 source images were undecodable"):
        run(tokenizer, load_image_dataset(str(folder)), tmp_path / "none", shard_size=3)
