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

.PHONY: setup demo test lint clean app test-browser

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

# `make app`: the web demo on http://127.0.0.1:7860 (docs/app.md). PIPELINE=folder serves another pipeline (e.g. a
# converted official checkpoint); the default is what `make demo` writes, which is made first when missing.
PIPELINE ?= demo_out/pipeline
APP_PORT ?= 7860
app: setup
	@if [ "$(PIPELINE)" = demo_out/pipeline ] && [ ! -f demo_out/pipeline/model_index.json ]; then \
		echo "demo_out/pipeline is missing: running make demo first (a few minutes)"; $(MAKE) demo; fi
	GRADIO_ANALYTICS_ENABLED=False OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} \
		$(PY) examples/app.py --pipeline "$(PIPELINE)" --port $(APP_PORT)

# `make test-browser` (not part of `make test`): the app in headless Chromium driven by Selenium; installs Debian's
# chromium + chromium-driver and the selenium package when missing; writes docs/figures/app.png. It serves
# demo_out/pipeline when `make demo` has written it, else a tiny random pipeline (PROLOGUE_APP_PIPELINE overrides).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-browser: setup
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium chromium-driver)
	$(PY) -c "import selenium" 2>/dev/null || $(PY) -m pip install -q selenium
	PROLOGUE_APP_PIPELINE=$${PROLOGUE_APP_PIPELINE:-$$([ -f demo_out/pipeline/model_index.json ] && echo demo_out/pipeline)} \
		OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest tests_browser

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf demo_out .pytest_cache
