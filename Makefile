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

.PHONY: install install-dev run test lint clean wheelhouse image image-offline base-image-offline

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

# --- wheelhouse and container images (README, "容器 / Container"); everything goes under build/ --------
BUILD := build
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
TOOLS := $(BUILD)/tools-venv
WHEELHOUSE := $(BUILD)/wheelhouse
# The dependencies' wheels are rebuilt only when pyproject.toml changes (keyed by its hash); tuwen's own
# wheel is rebuilt every time, from the current source.
WHEEL_KEY = $(shell sha256sum pyproject.toml | cut -c1-12)
PY_TAG = $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
WHEEL_TARBALL = $(BUILD)/tuwen-wheelhouse-$(VERSION)-py$(PY_TAG)-$(shell uname -m).tar.gz
# `make image`: docker when its engine answers, else podman. Podman/buildah need --format docker to keep
# the image's HEALTHCHECK (the OCI format has no such field).
ENGINE = $(shell if docker info >/dev/null 2>&1; then echo docker; elif command -v podman >/dev/null; then echo podman; fi)
IMAGE ?= tuwen:latest
# runtime = the CPU image; gpu = CUDA PyTorch + the gpu extra (needs internet; see the Dockerfile's head)
IMAGE_TARGET ?= runtime
# `make image-offline`: no container registry at all. The base image comes from Debian packages
# (debootstrap, then imported), the Python packages from the wheelhouse.
OFFLINE_IMAGE ?= localhost/tuwen:latest
DEBIAN_SUITE ?= bookworm
DEBIAN_MIRROR ?= http://deb.debian.org/debian
DEBIAN_PACKAGES := python3,python3-venv,ca-certificates
BASE_KEY = $(shell printf '%s' '$(DEBIAN_SUITE) $(DEBIAN_MIRROR) $(DEBIAN_PACKAGES)' | sha256sum | cut -c1-12)
BASE_TAR = $(BUILD)/image/rootfs-$(DEBIAN_SUITE)-$(BASE_KEY).tar
OFFLINE_BASE = localhost/debian:$(DEBIAN_SUITE)-$(BASE_KEY)
BUILDER = $(shell if command -v buildah >/dev/null; then echo buildah bud; else echo podman build; fi)

$(TOOLS)/bin/pip:
	$(PYTHON) -m venv $(TOOLS)

$(WHEELHOUSE)/.deps-$(WHEEL_KEY): pyproject.toml | $(TOOLS)/bin/pip
	rm -rf $(WHEELHOUSE) $(BUILD)/lib $(BUILD)/bdist.* && mkdir -p $(WHEELHOUSE)/wheels
	$(TOOLS)/bin/pip wheel -q --wheel-dir $(WHEELHOUSE)/wheels .
	touch $@

# Wheels for tuwen and its runtime dependencies (the OCR stack; no torch), plus install.sh, in a folder and a
# tarball: `tar xzf tuwen-wheelhouse-*.tar.gz && sh tuwen-wheelhouse/install.sh` on a machine without internet
# (same Python version and architecture as this one).
wheelhouse: $(WHEELHOUSE)/.deps-$(WHEEL_KEY)
	@# setuptools builds in ./build too; stale files there would end up in the wheel
	rm -rf $(BUILD)/lib $(BUILD)/bdist.* $(WHEELHOUSE)/wheels/tuwen-*.whl
	$(TOOLS)/bin/pip wheel -q --no-deps --wheel-dir $(WHEELHOUSE)/wheels .
	rm -rf $(BUILD)/lib $(BUILD)/bdist.*
	printf '%s\n' '$(PY_TAG)' > $(WHEELHOUSE)/python-version
	cp packaging/install.sh config.example.toml $(WHEELHOUSE)/
	tar -C $(BUILD) --transform 's,^wheelhouse,tuwen-wheelhouse,' --exclude '.deps-*' -cf - wheelhouse \
	  | gzip -1 > $(WHEEL_TARBALL).part && mv $(WHEEL_TARBALL).part $(WHEEL_TARBALL)
	@echo "wheelhouse: $(WHEELHOUSE)/wheels and $(WHEEL_TARBALL)"

image:
	@test -n "$(ENGINE)" || { echo "make image needs docker (with a running engine) or podman"; exit 1; }
	$(ENGINE) build $(if $(filter podman,$(ENGINE)),--format docker) --target $(IMAGE_TARGET) -t $(IMAGE) .

# A Debian root file system from Debian's own packages (needs root and debootstrap), tarred once.
$(BASE_TAR):
	rm -rf $(BUILD)/image/rootfs.tmp && mkdir -p $(BUILD)/image
	debootstrap --variant=minbase --include=$(DEBIAN_PACKAGES) $(DEBIAN_SUITE) $(BUILD)/image/rootfs.tmp \
	  $(DEBIAN_MIRROR)
	rm -rf $(BUILD)/image/rootfs.tmp/var/cache/apt/archives/*.deb $(BUILD)/image/rootfs.tmp/var/lib/apt/lists/*
	tar -C $(BUILD)/image/rootfs.tmp --numeric-owner -cf $@.part . && mv $@.part $@
	rm -rf $(BUILD)/image/rootfs.tmp

base-image-offline: $(BASE_TAR)
	podman image exists $(OFFLINE_BASE) || podman import $(BASE_TAR) $(OFFLINE_BASE)

image-offline: wheelhouse base-image-offline
	$(BUILDER) --isolation chroot --format docker --pull=never --target runtime \
	  --build-arg BASE_IMAGE=$(OFFLINE_BASE) --build-arg WHEELHOUSE=$(WHEELHOUSE)/wheels -t $(OFFLINE_IMAGE) .
