import importlib.util
from pathlib import Path

import pytest
import torch

REPO_DIR = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_DIR.parent / "shared"
OFFICIAL_FIXTURE_DIR = SHARED_DIR / "fixtures" / "official-prologue-tiny"


@pytest.fixture
def official_fixture_dir() -> Path:
    """The official tiny fixture (../shared beside the repo); tests using it skip when it is absent."""
    if not OFFICIAL_FIXTURE_DIR.is_dir():
        pytest.skip(f"official fixture folder {OFFICIAL_FIXTURE_DIR} is absent (../shared is not beside the repo)")
    return OFFICIAL_FIXTURE_DIR


@pytest.fixture
def load_example():
    """``load_example(name)`` imports ``examples/<name>.py`` as a module (the example scripts are not a package);
    ``load_example(name, folder="benchmarks")`` does the same for a benchmark script."""

    def load(name: str, folder: str = "examples"):
        spec = importlib.util.spec_from_file_location(f"{folder}_{name}", REPO_DIR / folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
