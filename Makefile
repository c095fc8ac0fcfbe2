# tuwen — `make run` to start, `make test` to test. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Without CUDA, take PyTorch's CPU build (an unpinned torch, also pulled in by accelerate, is a multi-GB
# CUDA download). On a GPU box `make install` leaves torch to pip's resolver; see README.
TORCH_CPU := torch==2.13.0
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: install install-dev run test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@if [ -z "$(HAS_CUDA)" ]; then echo "no CUDA found: installing $(TORCH_CPU) (CPU build)"; $(PIP) install -q $(TORCH_CPU); fi
	$(PIP) install -q -e .
	touch $@

install: $(VENV)/.installed

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e '.[dev,wechat]'
	touch $@

install-dev: $(VENV)/.installed-dev

run: install
	mkdir -p inbox
	$(VENV)/bin/tuwen serve -c config.example.toml

test: install-dev
	$(PY) -m pytest -q

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
