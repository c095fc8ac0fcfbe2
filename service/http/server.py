"""How tuwen runs uvicorn: limits that keep slow or hostile clients from making the service unreachable.

- `[http] max_connections` is uvicorn's `limit_concurrency`: past it, new requests get a 503 at once instead
  of the process running out of file descriptors (the systemd unit raises `LimitNOFILE` to 65536).
- A connection must finish sending its first request's headers within `[http] header_timeout_seconds`
  (slowloris); between requests uvicorn's keep-alive timeout closes idle connections. Bodies are read with
  their own deadline in the handlers (`service.http.chat_shapes.read_body`).
- The plain asyncio event loop: when `accept()` fails for lack of file descriptors it logs once and waits a
  second before trying again, instead of spinning and logging hundreds of thousands of lines.
- uvicorn's own signal handling is off (`App.serve_forever` owns SIGTERM/SIGINT); open streams get
  `timeout_graceful_shutdown` seconds at shutdown.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.config import Config


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the first request's headers."""

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = self.loop.call_later(
            self.header_timeout, self._headers_too_slow
        )

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()


def uvicorn_config(app: Any, config: Config, *, port: int | None = None) -> uvicorn.Config:
    """The uvicorn configuration for the tuwen HTTP app under `[http]`."""
    http = config.http
    protocol = type(
        "TuwenH11Protocol", (GuardedH11Protocol,), {"header_timeout": http.header_timeout_seconds}
    )
    return uvicorn.Config(
        app,
        host=http.host,
        port=http.port if port is None else port,
        http=protocol,
        loop="asyncio",
        log_level="warning",
        lifespan="off",
        limit_concurrency=http.max_connections,
        timeout_keep_alive=int(http.keep_alive_seconds),
        # A chat stream still open at shutdown gets this long, then is cut.
        timeout_graceful_shutdown=5,
        # No Server/Date headers that advertise the stack; a reverse proxy adds what it wants.
        server_header=False,
    )


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGTERM/SIGINT."""

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        return

    def capture_signals(self) -> Any:  # uvicorn >= 0.29
        import contextlib

        return contextlib.nullcontext()
