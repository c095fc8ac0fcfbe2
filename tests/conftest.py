"""Shared fixtures: the tiny random GLM-4V checkpoint (built once per run) and rendered scans."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Model hubs are unreachable here and in CI: fail fast instead of retrying for ~23 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_glm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A standard GLM-4V checkpoint folder with random weights, built offline."""
    from tests.tinyglm import build_tiny_glm

    return build_tiny_glm(tmp_path_factory.mktemp("tiny-glm4v"))
