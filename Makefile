# yexport: set-up, demo, tests, lint, benchmarks. `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The torch wheel that these machines keep locally; pyproject admits it, so pip takes it first.
TORCH_PIN ?= torch==2.13.0
# timm (a test dependency) needs torchvision; the one built for TORCH_PIN, without its dependencies, so
# that pip never replaces the CPU torch with another (multi-GB) build to satisfy a newer torchvision
TORCHVISION_PIN ?= torchvision==0.28.0
PYTEST_ARGS ?=
# pytest-xdist workers: one per core (at most 8; each holds its own torch); PYTEST_WORKERS=0 runs in this process
PYTEST_WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --maxprocesses=8

.PHONY: gpu-check help install install-system install-browser demo test test-fast lint bench bench-quick graphs graphs-check graphs-update clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: install-system $(STAMP) ## create .venv and install yexport with its dev tools (and Debian's graphviz, chromium)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q --no-deps "$(TORCHVISION_PIN)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install-system: ## Debian packages: graphviz (dot) for `yexport graph`, chromium for `yexport render` (Ubuntu: graphviz only, see README)
	@if command -v dot >/dev/null && command -v chromium >/dev/null; then echo "graphviz and chromium present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q graphviz fonts-dejavu-core; \
	  if apt-cache show chromium 2>/dev/null | grep -q '^Filename:'; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "note: this distribution has no 'chromium' deb (Ubuntu's chromium-browser is a snap that does not run"; \
	    echo "      headless here): 'yexport render' is unavailable and the browser tests skip; graph, view and all else work"; fi; \
	else echo "warning: install Debian packages 'graphviz' and 'chromium' (as root) for graph rendering"; fi

install-browser: ## only Chromium (headless browser for `yexport render`; Debian only)
	@command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

demo: install ## install everything (venv, graphviz, chromium), export yolov5s fused and keep-bn, check parity
	$(BIN)/yexport export yolov5s --variants fused,keep-bn -o exports

test: $(STAMP) ## the whole test suite (GPU and browser tests skip with a reason where unavailable)
	$(PYTEST) $(PYTEST_ARGS)

test-fast: $(STAMP) ## the tests without the slow ones (full YOLO exports at 640, dynamo captures, training-mode exports, repeats of a covered behaviour)
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check exporter tests bench
	$(BIN)/mypy exporter

bench: $(STAMP) ## benchmarks: stage costs, graph quality, start-up, scale; against the official exporter with OFFICIAL_REPO=... OFFICIAL_PYTHON=... (writes bench/results.md, .json)
	$(BIN)/python bench/run.py

bench-quick: $(STAMP) ## the benchmarks in quick mode (yolov5s only; about 10 minutes on 2 busy cores)
	$(BIN)/python bench/run.py --quick

gpu-check: $(STAMP) ## on a CUDA machine: export yolov5s fused/keep-bn/dynamic/half, check CPU+CUDA parity and determinism
	$(BIN)/python bench/gpu_check.py

graphs: $(STAMP) ## render graphviz_out/ diagrams of the main fixture variants
	$(BIN)/python fixtures/golden/goldens.py render

graphs-check: $(STAMP) ## re-export the golden variants and diff them against fixtures/golden
	$(BIN)/python fixtures/golden/goldens.py check

graphs-update: $(STAMP) ## rewrite fixtures/golden after an intended graph change
	$(BIN)/python fixtures/golden/goldens.py update

clean:
	rm -rf exports build dist .pytest_cache .mypy_cache .ruff_cache
