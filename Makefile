# tuwen — `make run` to start, `make test` to test. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONFIG ?= config.example.toml
# The tests run the transformers code path with a tiny model on the CPU. PyTorch's CPU wheels come from
# PyTorch's own index (PyPI's Linux wheels are CUDA builds of several GB); set TORCH_INDEX= to use only
# the configured package index.
TORCH_CPU := torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: install install-dev run test lint clean

# The default install: the embedded OCR service only (no PyTorch). `pip install -e '.[gpu]'` adds the GPU stack.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

install: $(VENV)/.installed

$(VENV)/.installed-dev: $(VENV)/.installed
	@if [ -z "$(HAS_CUDA)" ]; then \
	  echo "installing $(TORCH_CPU) (CPU build) for the tests"; \
	  $(PIP) install -q $(TORCH_CPU) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)); \
	fi
	$(PIP) install -q -e '.[dev,gpu,wechat]'
	touch $@

install-dev: $(VENV)/.installed-dev

run: install
	mkdir -p inbox
	$(VENV)/bin/tuwen serve -c $(CONFIG)

test: install-dev
	$(PY) -m pytest -q

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
