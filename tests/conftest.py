from pathlib import Path

import pytest
import torch

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
OFFICIAL_FIXTURE_DIR = SHARED_DIR / "fixtures" / "official-prologue-tiny"


@pytest.fixture
def official_fixture_dir() -> Path:
    """The official tiny fixture (../shared beside the repo); tests using it skip when it is absent."""
    if not OFFICIAL_FIXTURE_DIR.is_dir():
        pytest.skip(f"official fixture folder {OFFICIAL_FIXTURE_DIR} is absent (../shared is not beside the repo)")
    return OFFICIAL_FIXTURE_DIR


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
