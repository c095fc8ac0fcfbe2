"""How tuwen runs uvicorn: limits that keep slow or hostile clients from making the service unreachable.

- `[http] max_connections` is uvicorn's `limit_concurrency`: past it, new requests get a 503 at once. The
  budget is also checked against the process's file descriptor limit (`connection_budget`), and a
  connection past what the descriptors allow is closed the moment it is accepted, so a flood can never take
  the descriptors the database and the watched folders need (the systemd unit sets LimitNOFILE=65536).
- A connection must finish sending its first request's headers within `[http] header_timeout_seconds`
  (slowloris); between requests uvicorn's keep-alive timeout closes idle connections. Bodies are read with
  their own deadline in the handlers (`service.http.chat_shapes.read_body`).
- `AcceptErrorThrottle`: should accept() still fail for lack of descriptors, the failure is logged once a
  second, not hundreds of thousands of times (CPython 3.11's selector loop logs each retry).
- uvicorn's own signal handling is off (`App.serve_forever` owns SIGTERM/SIGINT); open streams get
  `timeout_graceful_shutdown` seconds at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.config import Config

log = logging.getLogger(f"tuwen.{__name__}")

# File descriptors kept for everything but HTTP connections: the database, watched folders, uploads, logs.
FD_RESERVE = 128


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the first request's headers and a hard connection cap."""

    header_timeout: float = 10.0
    hard_cap: int = 100_000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        if len(self.connections) > self.hard_cap:
            transport.abort()  # frees the descriptor at once; the client sees a reset and retries
            return
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

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


def connection_budget(wanted: int) -> int:
    """How many HTTP connections this process can hold: `wanted`, or less when file descriptors are few.

    The soft RLIMIT_NOFILE is raised towards the hard one first (allowed without privileges); when that is
    still too low for `wanted` connections plus what the rest of the service needs, the budget shrinks and
    the log says how to raise the limit.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    except (OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY or soft - FD_RESERVE >= wanted:
        return wanted
    budget = max(8, soft - FD_RESERVE)
    log.warning(
        "only %d file descriptors: at most %d HTTP connections instead of [http] max_connections = %d "
        "(raise the limit: LimitNOFILE= under systemd, --ulimit nofile= for containers)",
        soft,
        budget,
        wanted,
    )
    return budget


def uvicorn_config(
    app: Any, config: Config, *, host: str | None = None, port: int | None = None
) -> uvicorn.Config:
    """The uvicorn configuration for the tuwen HTTP app under `[http]`."""
    http = config.http
    budget = connection_budget(http.max_connections)
    settings = {"header_timeout": http.header_timeout_seconds, "hard_cap": budget + 16}
    protocol = type("TuwenH11Protocol", (GuardedH11Protocol,), settings)
    return uvicorn.Config(
        app,
        host=http.host if host is None else host,
        port=http.port if port is None else port,
        http=protocol,
        loop="asyncio",
        log_level="warning",
        lifespan="off",
        limit_concurrency=budget,
        timeout_keep_alive=int(http.keep_alive_seconds),
        # A chat stream still open at shutdown gets this long, then is cut.
        timeout_graceful_shutdown=5,
        # No Server header that advertises the stack; a reverse proxy adds what it wants.
        server_header=False,
    )


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGTERM/SIGINT."""

    def capture_signals(self) -> Any:
        return contextlib.nullcontext()


class AcceptErrorThrottle:
    """An event loop exception handler that logs an accept() failure at most once a second.

    Other errors go to the loop's default handler unchanged.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last = -interval
        self.suppressed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "out of system resource" not in str(context.get("message", "")):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self._last < self.interval:
            self.suppressed += 1
            return
        self._last = now
        note = f" ({self.suppressed} more suppressed)" if self.suppressed else ""
        self.suppressed = 0
        log.error("cannot accept connections: %s%s", context.get("exception"), note)
