"""The converter never loses data and names what is wrong with its inputs (issue 16, items 1 and 11).

Every case works on *copies* of the official fixture folders (so a regression could never damage the vendored
fixtures) and checks that a refused run left every input byte unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prologue_hf import PrologueARForCausalLM
from prologue_hf.conversion import (
    OfficialConfig,
    check_output_dir,
    convert_official_checkpoint,
    save_official_ar,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> hex)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def release(tmp_path) -> Path:
    """A copy of the 2D fixture laid out as a download: ``D/config.yaml``, ``D/tokenizer``, ``D/ar``."""
    root = tmp_path / "D"
    root.mkdir()
    shutil.copyfile(FIXTURES / "official-2d-tiny" / "config.yaml", root / "config.yaml")
    for part in ("tokenizer", "ar"):
        shutil.copytree(FIXTURES / "official-2d-tiny" / part, root / part)
    return root


def _args(root: Path, output: Path, *extra: str) -> list[str]:
    return ["--config", str(root / "config.yaml"), "--tokenizer-dir", str(root / "tokenizer"),
            "--ar-dir", str(root / "ar"), "--output-dir", str(output), *extra]


@pytest.mark.parametrize(
    "output, relation",
    [
        (lambda d: d, "contains"),  # the case: --output-dir D with D/tokenizer and D/ar
        (lambda d: d / "tokenizer", "is"),
        (lambda d: d / "ar", "is"),
        (lambda d: d / "ar" / "converted", "lies inside"),
        (lambda d: d / "tokenizer" / "a" / "b", "lies inside"),
    ],
)
def test_output_that_is_contains_or_lies_inside_an_input_is_refused(release, load_example, output, relation):
    cli = load_example("convert_official_checkpoint")
    before = _digest(release)
    with pytest.raises(ValueError, match=rf"output_dir .* {relation} the input .*never writes into"):
        cli.main(_args(release, output(release), "--overwrite"))  # --overwrite does not lift the guard
    assert _digest(release) == before
    assert sorted(p.name for p in release.parent.iterdir()) == ["D"]  # nothing staged beside it


def test_the_config_file_and_symlinked_aliases_count_as_inputs(release, tmp_path, load_example):
    cli = load_example("convert_official_checkpoint")
    before = _digest(release)
    # the config lives in the output folder (its rename would have replaced it)
    (tmp_path / "out").mkdir()
    shutil.copyfile(release / "config.yaml", tmp_path / "out" / "config.yaml")
    args = _args(release, tmp_path / "out", "--overwrite")
    args[1] = str(tmp_path / "out" / "config.yaml")
    with pytest.raises(ValueError, match=r"contains the input config file"):
        cli.main(args)
    # a symlink to the AR folder is the AR folder
    os.symlink(release / "ar", tmp_path / "alias")
    with pytest.raises(ValueError, match=r"is the input ar_dir"):
        cli.main(_args(release, tmp_path / "alias", "--overwrite"))
    assert _digest(release) == before


def test_non_empty_output_needs_overwrite_and_is_then_replaced_whole(release, tmp_path, load_example):
    cli = load_example("convert_official_checkpoint")
    out = tmp_path / "converted"
    (out / "ar").mkdir(parents=True)
    stale = {"ar/pytorch_model.bin": b"stale", "ar/model.safetensors.index.json": b"{}", "notes.txt": b"mine"}
    for name, data in stale.items():
        (out / name).write_bytes(data)
    with pytest.raises(FileExistsError, match=r"is not empty; pass overwrite=True \(--overwrite\)"):
        cli.main(_args(release, out))
    assert {k: (out / k).read_bytes() for k in stale} == stale  # refused: untouched
    before = _digest(release)
    written = cli.main(_args(release, out, "--overwrite"))
    assert written["pipeline"] == out.resolve()
    assert not any((out / name).exists() for name in stale)  # no stale weights survive next to the new ones
    assert sorted(p.name for p in out.iterdir()) == ["ar", "model_index.json", "pipeline.py", "tokenizer"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D", "converted"]  # no staging / old folder left
    assert _digest(release) == before
    PrologueARForCausalLM.from_pretrained(out / "ar")  # the replaced folder loads


def test_a_failed_conversion_leaves_the_output_folder_as_it_was(release, tmp_path):
    out = tmp_path / "converted"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    (release / "ar" / "model.safetensors").unlink()  # the AR shard is missing: conversion fails after the tokenizer
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*AR, online weights"):
        convert_official_checkpoint(release / "config.yaml", out, release / "tokenizer", release / "ar", overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D", "converted"]


def test_reverse_never_writes_into_the_folder_it_reads(tmp_path, load_example):
    cli = load_example("convert_official_checkpoint")
    ours = tmp_path / "X"
    fixture = FIXTURES / "official-prologue-tiny"
    convert_official_checkpoint(fixture / "config.yaml", ours, ar_dir=fixture / "ar")
    before = _digest(ours)
    for output in (ours / "ar", ours, ours / "ar" / "official"):
        with pytest.raises(ValueError, match=r"the input AR folder"):
            cli.main(["--reverse", "--ar-dir", str(ours / "ar"), "--output-dir", str(output), "--overwrite"])
    assert _digest(ours) == before
    assert PrologueARForCausalLM.from_pretrained(ours / "ar").config.num_prologue_tokens == 4  # still ours
    # into an occupied folder: refused, then replaced whole with --overwrite
    target = tmp_path / "official_ar"
    target.mkdir()
    (target / "model_1.safetensors").write_bytes(b"stale")
    with pytest.raises(FileExistsError, match="not empty"):
        cli.main(["--reverse", "--ar-dir", str(ours / "ar"), "--output-dir", str(target)])
    written = cli.main(["--reverse", "--ar-dir", str(ours / "ar"), "--output-dir", str(target), "--overwrite"])
    assert sorted(p.name for p in target.iterdir()) == ["ar_config.yaml", "model.safetensors"]
    assert written["weights"] == target.resolve() / "model.safetensors"
    # the library function guards on its own too (model.name_or_path is the folder it came from)
    model = PrologueARForCausalLM.from_pretrained(ours / "ar")
    with pytest.raises(ValueError, match=r"is the input AR folder"):
        save_official_ar(model, ours / "ar")
    assert _digest(ours) == before


def test_the_script_reports_a_refusal_in_one_line_with_a_failing_status(release):
    before = _digest(release)
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "convert_official_checkpoint.py"), *_args(release, release)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: output_dir") and "Traceback" not in result.stderr
    assert _digest(release) == before


def test_check_output_dir_accepts_a_fresh_or_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty", {"input": tmp_path / "elsewhere"}) == (tmp_path / "empty").resolve()
    assert check_output_dir(tmp_path / "new" / "deeper", {}) == (tmp_path / "new" / "deeper").resolve()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        check_output_dir(tmp_path / "file", {}, overwrite=True)


# ------------------------------------------------------------------------------------- bad config files (item 11)
def _config_text() -> str:
    return (FIXTURES / "official-2d-tiny" / "config.yaml").read_text()


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    return path


def test_truncated_yaml_names_the_file_and_the_missing_key(release, tmp_path):
    text = _config_text()
    # cut where the top-level flags have not come yet: reported as missing, never as "'Prologue' = False"
    cut = _write(tmp_path, text[: text.index("ARModel:")].encode())
    with pytest.raises(ValueError, match=rf"{cut}: required config key 'Prologue' is missing"):
        convert_official_checkpoint(cut, tmp_path / "out", release / "tokenizer", release / "ar")
    # cut inside a flow sequence: the YAML no longer parses
    cut = _write(tmp_path, (text + "extra: [1, 2").encode())
    with pytest.raises(ValueError, match=rf"official config file {cut} is not valid YAML"):
        convert_official_checkpoint(cut, tmp_path / "out", release / "tokenizer", release / "ar")
    empty = _write(tmp_path, b"")
    with pytest.raises(ValueError, match=rf"{empty} is empty"):
        OfficialConfig.from_yaml(empty)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "data, match",
    [
        (b"Prologue: false\n" + bytes(range(128, 256)), r"is not UTF-8 text \(byte 16 is 0x80\)"),
        # the start of a safetensors file: valid UTF-8, but its length prefix holds control characters
        (b"\x18\x00\x00\x00\x00\x00\x00\x00" + b'{"__metadata__":{"format":"pt"}}', r"is not valid YAML"),
    ],
)
def test_binary_yaml_names_the_file(release, tmp_path, data, match):
    binary = _write(tmp_path, data)
    with pytest.raises(ValueError, match=rf"official config file {binary} {match}"):
        convert_official_checkpoint(binary, tmp_path / "out", release / "tokenizer", release / "ar")


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("Encoder", "heads", 0),
        ("Decoder", "heads", -2),
        ("Encoder", "layer_num", 0),
        ("ARModel", "heads", 0),
        ("ARModel", "dim", 0),
        ("Quantizer", "codebook_size", 0),
        ("Quantizer", "z_dim", 0),
        (None, "image_size", 0),
        (None, "patch_size", 0),
        (None, "z_len", -1),
        ("Encoder", "mlp_ratio", "0/3"),
    ],
)
def test_non_positive_sizes_name_the_key(release, tmp_path, section, key, value):
    data = yaml.safe_load(_config_text())
    (data[section] if section else data)[key] = value
    path = _write(tmp_path, yaml.safe_dump(data).encode())
    dotted = f"{section}.{key}" if section else key
    with pytest.raises(ValueError, match=rf"{path}: config key '{dotted}' = .* must be (>= 1|> 0)"):
        convert_official_checkpoint(path, tmp_path / "out", release / "tokenizer", release / "ar")


def test_a_folder_of_no_official_family_is_refused_with_the_supported_list(tmp_path, load_example):
    """A converted prologue-hf folder given back to the converter: its keys are ours, not an official layout."""
    cli = load_example("convert_official_checkpoint")
    fixture = FIXTURES / "official-2d-tiny"
    ours = tmp_path / "ours"
    convert_official_checkpoint(fixture / "config.yaml", ours, fixture / "tokenizer", fixture / "ar")
    (ours / "tokenizer" / "model_2.safetensors").symlink_to(ours / "tokenizer" / "model.safetensors")
    (ours / "tokenizer" / "model_3.safetensors").symlink_to(ours / "tokenizer" / "model.safetensors")
    with pytest.raises(ValueError, match=r"is not an official Prologue checkpoint shard.*Supported official families: "
                       r"prologue: .*onestage: .*post: .*2d: .*1d: "):
        cli.main(["--config", str(fixture / "config.yaml"), "--tokenizer-dir", str(ours / "tokenizer"),
                  "--output-dir", str(tmp_path / "again")])
    with pytest.raises(ValueError, match=r"holds no official key .*not an official AR model"):
        cli.main(["--config", str(fixture / "config.yaml"), "--ar-dir", str(ours / "ar"),
                  "--output-dir", str(tmp_path / "again")])
    assert not (tmp_path / "again").exists()
