# Two commands: `make demo` and `make test`. Both create .venv at the repo root if missing.
# torch is pinned here (setup.cfg keeps a range for users): torch 2.14.1 + torchvision 0.29.1 is the pair that
# imports cleanly with lpips/evaluate/transformers on this platform (README, "Why torch 2.14.1").
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev]" $(TORCH_PIN)
	touch $@

setup: $(VENV)/.installed

# The demo and the tests use one OpenMP thread by default (override with OMP_NUM_THREADS=N): the models are tiny,
# and on a 2-core machine shared with anything else (a dataloader, a second test process) 2 threads per process
# made training steps ~20x slower here.
demo: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) examples/demo.py --output-dir demo_out

test: setup
	$(PY) -m ruff check .
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest tests --doctest-modules src/prologue_hf

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf demo_out .pytest_cache
