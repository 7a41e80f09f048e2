"""The top-level API is the documented list, moved names point to imports that work, and the library never imports
research/."""

import importlib
import inspect
import re
from pathlib import Path

import pytest

import prologue_hf
from prologue_hf import PrologueARConfig, PrologueTokenizerConfig
from prologue_hf.pipelines import ProloguePipeline

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"

# The top level is the API of the models, the pipeline, the trainers, the converter and the metrics (issue 14: ~30
# names, down from 83); a name joins it on purpose, with a row in docs/api.md, never by accident.
TOP_LEVEL = {
    "AR_PRESETS", "PrologueARConfig", "PrologueARForCausalLM", "PrologueARModel", "ProloguePostConfig",
    "ProloguePostModel", "PrologueTokenizerConfig", "PrologueTokenizerModel", "PrologueVocabulary", "check_compatible",
    "load_visual_tokenizer", "ProloguePipeline", "ProloguePipelineOutput", "SamplingParams", "GuidanceSchedule",
    "SAMPLING_PRESETS", "PrologueTokenizerTrainer", "PrologueTokenizerTrainingArguments", "PrologueStage1Model",
    "PrologueStage1LossConfig", "PrologueARTrainer", "PrologueARTrainingArguments", "pretokenize_dataset",
    "load_pretokenized_dataset", "ProloguePostTrainer", "ProloguePostStage1Model", "ProloguePostLossConfig",
    "convert_official_checkpoint", "save_official_ar", "sample_to_npz", "compute_generation_metrics",
    "evaluate_reconstruction", "train_linear_probe", "load_metric",
}


def _section(title: str) -> str:
    text = DOCS.read_text()
    assert f"## {title}\n" in text, f"docs/api.md has no '## {title}' section"
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_top_level_is_exactly_the_documented_list():
    assert set(prologue_hf.__all__) == TOP_LEVEL
    assert len(prologue_hf.__all__) == len(TOP_LEVEL)  # no duplicates
    assert set(dir(prologue_hf)) >= TOP_LEVEL


def test_every_exported_name_resolves():
    for name in prologue_hf.__all__:
        assert getattr(prologue_hf, name) is not None, name


def test_top_level_section_of_api_doc_matches_all():
    documented = set()
    for row in _section("Top level").splitlines():
        if not row.startswith("| `"):
            continue
        cell = row.split(" | ")[0]
        while re.search(r"\([^()]*\)", cell):  # drop "(methods ...)" asides, nested ones included
            cell = re.sub(r"\([^()]*\)", "", cell)
        documented |= set(re.findall(r"(?:^\| |, )`([A-Za-z_][A-Za-z0-9_]*)`", cell))
    assert documented == TOP_LEVEL, (sorted(TOP_LEVEL - documented), sorted(documented - TOP_LEVEL))


def test_moved_table_matches_the_package_and_every_new_import_works():
    rows = re.findall(r"^\| `from prologue_hf import (\w+)` \| `from ([\w.]+) import (\w+)` \|$", _section("Moved"), re.M)
    assert rows, "no rows parsed from the Moved table"
    table = {old: module for old, module, new in rows}
    assert len(table) == len(rows), "a name is listed twice"
    assert all(old == new for old, _, new in rows), "a moved name changed spelling: say so in its own row"
    assert table == prologue_hf._MOVED
    assert not set(table) & TOP_LEVEL
    for name, module in table.items():
        assert getattr(importlib.import_module(module), name) is not None, (module, name)


def test_an_old_top_level_name_says_where_it_went():
    with pytest.raises(AttributeError, match=r"from prologue_hf\.research\.demo import run_demo"):
        prologue_hf.run_demo  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'not_a_name'"):
        prologue_hf.not_a_name  # noqa: B018
    assert not hasattr(prologue_hf, "run_demo")


def test_renamed_modules_import_from_their_new_path_only():
    rows = re.findall(r"^\| `(prologue_hf[\w.]*)` \| `(prologue_hf[\w.]*)` \|$", _section("Moved"), re.M)
    assert len(rows) >= 5
    for old, new in rows:
        importlib.import_module(new)
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)


def test_names_moved_between_modules_import_from_their_new_home_only():
    rows = re.findall(
        r"^\| `from (prologue_hf\.[\w.]+) import (\w+)` \| `from ([\w.]+) import (\w+)`", _section("Moved"), re.M
    )
    assert len(rows) >= 5
    for old_module, old_name, new_module, new_name in rows:
        assert getattr(importlib.import_module(new_module), new_name) is not None, (new_module, new_name)
        try:
            old = importlib.import_module(old_module)
        except ModuleNotFoundError:
            continue
        assert not hasattr(old, old_name), f"{old_module}.{old_name} still exists: the Moved table is wrong"


def test_the_library_never_imports_research():
    package = Path(prologue_hf.__file__).resolve().parent
    offenders = []
    for path in package.rglob("*.py"):
        if "research" in path.relative_to(package).parts:
            continue
        text = path.read_text()
        if re.search(r"(from|import)\s+(prologue_hf\.|\.+)research\b", text):
            offenders.append(str(path.relative_to(package)))
    assert not offenders, offenders


def test_documented_defaults_match_signatures():
    # the pipeline docs state these defaults; keep them true (a documented default that drifts from the code misleads)
    params = inspect.signature(ProloguePipeline.__call__).parameters
    assert params["num_images_per_label"].default == 1
    assert params["output_type"].default == "pil"
    assert PrologueTokenizerConfig().prologue_temperature == 0.1
    assert PrologueTokenizerConfig().num_prologue_tokens == 16
    assert PrologueTokenizerConfig().prologue_codebook_size == 1024
    assert PrologueARConfig().hidden_act == "gelu_pytorch_tanh"
