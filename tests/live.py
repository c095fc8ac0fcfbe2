"""A real tuwen service with its HTTP server on 127.0.0.1, in this test process (uvicorn in a thread)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from service.app import App
from service.composition import build_service
from service.config import Config
from service.http.app import create_http_app
from service.http.server import uvicorn_config


@dataclass
class LiveService:
    """The running service and where to reach it."""

    app: App
    base_url: str
    http_app: Any


@contextmanager
def running_service(
    config: Config, backend_factory: Callable[[Config], Any] | None = None
) -> Iterator[LiveService]:
    """Start App + HTTP on a free port; wait until the model is ready; stop everything afterwards."""
    kwargs = {"backend_factory": backend_factory} if backend_factory is not None else {}
    app = build_service(config, **kwargs)
    app.start()
    http_app = create_http_app(app.http_context())
    # The service's own uvicorn settings (limits, timeouts, the guarded protocol), on a free port.
    server = uvicorn.Server(uvicorn_config(http_app, config, host="127.0.0.1", port=0))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    app.worker.wait_ready(120)
    try:
        yield LiveService(app=app, base_url=f"http://127.0.0.1:{port}", http_app=http_app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        app.stop()
