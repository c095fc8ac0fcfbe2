"""What every HTTP module gets: the running service, the auth checker and the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from service.http.auth import Auth

if TYPE_CHECKING:
    from service.app import App


@dataclass
class HttpContext:
    """Shared by the routers; built once per `create_http_app`."""

    app: App
    auth: Auth
    metrics: Any = None  # service.http.metrics.Metrics
    extras: dict[str, Any] = field(default_factory=dict)
