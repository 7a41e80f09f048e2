"""Pretokenization with a bfloat16 CPU encoder runs its linears packed (models.packed_linear) and writes the same
ids as the plain bf16 product; float32 keeps F.linear (issue 19)."""

import contextlib

import numpy as np
import PIL.Image
import pytest
import torch

from prologue_hf.models.packed_linear import PackedLinear, packed_kernel
from prologue_hf.testing import tiny_tokenizer
from prologue_hf.training.image_data import load_image_dataset
from prologue_hf.training.pretokenize import PretokenizeConfig, pretokenize_dataset, shards

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"class{c}").mkdir()
        for i in range(3):
            low = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)  # smooth content: codes are not all ties
            PIL.Image.fromarray(low).resize((44, 40), PIL.Image.BILINEAR).save(root / f"class{c}" / f"{i}.png")
    return root


def _ids(tokenizer, image_folder, out):
    config = PretokenizeConfig(str(out), batch_size=2, shard_size=4)
    ds = pretokenize_dataset(tokenizer, load_image_dataset(str(image_folder)), config, source="folder", split="train")
    ds = ds.with_format("numpy")
    return np.concatenate([np.stack(ds["prologue_ids"]), np.stack(ds["visual_ids"])], axis=1)


def _spy(monkeypatch):
    """Records what packed_linears swapped in, per call."""
    calls = []
    original = shards.packed_linears

    @contextlib.contextmanager
    def spy(model, rows):
        with original(model, rows) as swapped:
            calls.append((model, rows, swapped))
            yield swapped

    monkeypatch.setattr(shards, "packed_linears", spy)
    return calls


def test_bf16_encoder_runs_packed_with_the_same_ids(image_folder, tmp_path, monkeypatch):
    tokenizer = tiny_tokenizer(seed=0).to(torch.bfloat16)
    monkeypatch.setattr(shards, "_packed_encoder", lambda tokenizer: contextlib.nullcontext([]))
    unpacked = _ids(tokenizer, image_folder, tmp_path / "unpacked")  # the plain bf16 products
    monkeypatch.undo()
    calls = _spy(monkeypatch)
    packed = _ids(tokenizer, image_folder, tmp_path / "packed")
    assert len(calls) == 2  # once per shard (6 images, 4 per shard), on the encoder only
    assert all(model is tokenizer.encoder and r == shards.PACKED_ROWS_HINT for model, r, _ in calls)
    if packed_kernel(torch.bfloat16, torch.device("cpu")) == "onednn":
        assert all(swapped and all(isinstance(m, PackedLinear) for m in swapped) for _, _, swapped in calls)
    assert unpacked.shape == (60, tokenizer.config.num_prologue_tokens + 16) and len(np.unique(unpacked)) > 4
    np.testing.assert_array_equal(packed, unpacked)
    assert all(type(m) is not PackedLinear for m in tokenizer.modules())  # put back after the run


def test_fp32_encoder_keeps_plain_linears(image_folder, tmp_path, monkeypatch):
    calls = _spy(monkeypatch)
    _ids(tiny_tokenizer(seed=0), image_folder, tmp_path / "fp32")
    assert calls == []


def test_bench_pretokenize_id_agreement_matches_rows_by_image_and_crop(load_example):
    import datasets

    bench = load_example("bench_pretokenize", folder="benchmarks")
    rows = {"image_index": [0, 0, 1, 1], "crop_index": [0, 1, 0, 1],
            "prologue_ids": [[1, 2], [3, 4], [5, 6], [7, 8]], "visual_ids": [[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]]}
    ours = datasets.Dataset.from_dict(rows)
    order = [3, 1, 2, 0]  # the reference lists the same rows in another order, one visual id differs
    reference = {k: [v[i] for i in order] for k, v in rows.items()}
    reference["visual_ids"][0] = [4, 4, 9]  # image 1, crop 1
    agreement = bench.id_agreement(ours, datasets.Dataset.from_dict(reference))
    assert agreement == pytest.approx({"all": 19 / 20, "prologue": 1.0, "visual": 11 / 12}, abs=1e-5)
