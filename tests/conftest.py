import contextlib
import importlib.util
import logging
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

REPO_DIR = Path(__file__).resolve().parents[1]
# Reference data made with the authors' unmodified code on tiny random-init models (each folder's README says how),
# vendored so that a clone runs the parity tests. Data only: weights, configs, tensors.
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
OFFICIAL_FIXTURE_DIR = FIXTURES_DIR / "official-prologue-tiny"


def official_fixture_path(name: str) -> Path:
    """``tests/fixtures/<name>`` (e.g. ``official-2d-tiny``, ``official-prologue-stage1-step``); fails loudly if absent."""
    path = FIXTURES_DIR / name
    if not path.is_dir():
        raise FileNotFoundError(f"fixture folder {path} is missing from the repository")
    return path


@pytest.fixture
def official_fixture_dir() -> Path:
    """The official Prologue tiny fixture (``tests/fixtures/official-prologue-tiny``)."""
    return official_fixture_path("official-prologue-tiny")


@pytest.fixture
def official_fixture():
    """``official_fixture(name)`` -> the vendored fixture folder ``tests/fixtures/<name>``."""
    return official_fixture_path


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


@pytest.fixture(scope="module")
def pipe():
    """A tiny random-weight pipeline (``tiny_pipeline(seed=0)``, 10 classes) with its progress bar off, one per test
    module (a module that needs another pipeline defines its own ``pipe``)."""
    from prologue_hf.testing import tiny_pipeline

    pipeline = tiny_pipeline(seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def one_thread():
    """Torch on one intra-op thread for the test, restored after it: the training tests' machines share their cores,
    and OpenMP contention makes two threads many times slower there. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """16 structured 32x32 PNGs in two class folders ``a``, ``b`` (a coloured square on a smooth gradient whose blue
    level differs by class), for the trainer tests."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 32)
    for c, name in enumerate(["a", "b"]):
        (root / name).mkdir()
        for i in range(8):
            image = np.zeros((32, 32, 3))
            image[..., 0], image[..., 1] = ramp[None, :], ramp[:, None]
            image[..., 2] = 60 + 120 * c
            y, x = rng.integers(0, 20, 2)
            image[y : y + 12, x : x + 12] = rng.integers(0, 256, 3)
            PIL.Image.fromarray(image.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def log_records():
    """``with log_records("logger.name") as records:`` collects the ``LogRecord`` s that logger handles inside the
    block (transformers' loggers do not propagate to the root logger, so ``caplog`` does not see them)."""

    @contextlib.contextmanager
    def capture(name: str):
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        try:
            yield records
        finally:
            logger.removeHandler(handler)

    return capture


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
