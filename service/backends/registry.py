"""The explicit registry of model backends: one visible place that maps `[model] backend` to a class.

Imports are lazy on purpose: the transformers backend pulls in torch (seconds to import), and none of the
backends should cost anything when another is configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.backends.base import Backend
    from service.config import Config


def create_backend(config: Config) -> Backend:
    """Build (but do not load) the backend named by `config.model.backend`."""
    kind = config.model.backend
    if kind == "ocr":
        from service.backends.ocr_backend import OcrBackend

        return OcrBackend(config)
    if kind == "transformers":
        from service.backends.transformers_backend import TransformersBackend

        return TransformersBackend(config)
    if kind == "openai":
        from service.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(config)
    raise ValueError(f"unknown backend {kind!r}")  # unreachable: config validation rejects it
