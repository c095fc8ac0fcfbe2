"""Supervision for everything that runs on its own thread: the model worker and every source.

Frigate's rule: a component that crashes is restarted, with a limit, and the health endpoint says so. A
`Supervisor` runs `target(stop)` on a daemon thread; when it raises, the exception is logged with the
component's name, the component waits a backoff delay and runs again. More than `max_restarts` crashes
within `window_seconds` and it gives up: state `failed`, which `/health` reports as down (503) until an
operator looks. A target that returns normally has finished (state `stopped`).

Sources and the worker report their state through `ComponentStatus`, the one shape `/health` and
`/metrics` read: `running` and `starting` count as up; `unavailable` (a dependency is missing and is being
waited for), `restarting`, `failed` and `disabled` as down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from service.retry import Backoff

log = logging.getLogger(f"tuwen.{__name__}")

UP_STATES = frozenset({"starting", "running"})


@dataclass(frozen=True)
class ComponentStatus:
    """What `/health` shows for one component (a folder watch, a bot, the model worker)."""

    name: str
    kind: str  # "watch", "telegram", "worker", ...
    state: str  # starting | running | unavailable | restarting | failed | disabled | stopped
    restarts: int = 0
    error: str | None = None
    since: float = 0.0

    @property
    def up(self) -> bool:
        """Whether the component is doing its job (or about to)."""
        return self.state in UP_STATES

    def as_dict(self) -> dict[str, object]:
        """The JSON form for `/health`."""
        body: dict[str, object] = {"name": self.name, "kind": self.kind, "state": self.state}
        body["restarts"] = self.restarts
        if self.error:
            body["error"] = self.error
        return body


class Supervisor:
    """Run `target(stop)` on a thread, restarting it with backoff when it raises."""

    def __init__(
        self,
        name: str,
        target: Callable[[threading.Event], None],
        *,
        backoff: Backoff | None = None,
        max_restarts: int = 5,
        window_seconds: float = 60.0,
        on_crash: Callable[[BaseException], None] | None = None,
        on_give_up: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self._target = target
        self.backoff = backoff or Backoff(base=1.0, cap=30.0)
        self.max_restarts = max_restarts
        self.window_seconds = window_seconds
        self._on_crash = on_crash
        self._on_give_up = on_give_up
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._crashes: deque[float] = deque()
        self.state = "starting"
        self.restarts = 0
        self.error: str | None = None
        self.since = time.time()

    def start(self) -> None:
        """Start the thread (returns at once)."""
        self.stop_event.clear()
        self._set("starting")
        self._thread = threading.Thread(target=self._loop, name=f"tuwen-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask the target to stop and wait up to `timeout`; True when the thread has ended."""
        self.stop_event.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s did not stop within %.0f s", self.name, timeout)
                return False
        self._set("stopped")
        return True

    @property
    def alive(self) -> bool:
        """Whether the supervising thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def mark(self, state: str, error: str | None = None) -> None:
        """Let the target report what it is doing (`running`, `unavailable`, ...)."""
        self._set(state, error)

    def _set(self, state: str, error: str | None = None) -> None:
        if state != self.state:
            self.since = time.time()
        self.state, self.error = state, error

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                self._target(self.stop_event)
            except Exception as exc:
                if time.monotonic() - started > self.window_seconds:
                    self.backoff.reset()  # it ran fine for a while: this is a new problem, not a loop
                if self.stop_event.is_set():
                    break
                log.exception("%s crashed: %s", self.name, exc)
                if self._on_crash is not None:
                    try:
                        self._on_crash(exc)
                    except Exception:
                        log.exception("%s: cleaning up after the crash failed", self.name)
                if not self._count_crash(exc):
                    if self._on_give_up is not None:
                        self._on_give_up(exc)
                    return
                self._set("restarting", f"{type(exc).__name__}: {exc}")
                if self.backoff.wait(self.stop_event):
                    break
                self.restarts += 1
                log.info("%s restarting (restart %d)", self.name, self.restarts)
                self._set("starting")
                continue
            break  # the target returned: it has finished
        if self.state != "failed":
            self._set("stopped")

    def _count_crash(self, exc: BaseException) -> bool:
        """Record a crash; False (and state `failed`) when there were too many within the window."""
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > self.window_seconds:
            self._crashes.popleft()
        if len(self._crashes) > self.max_restarts:
            self._set("failed", f"{type(exc).__name__}: {exc}")
            log.error(
                "%s crashed %d times within %.0f s; giving up until the service is restarted",
                self.name,
                len(self._crashes),
                self.window_seconds,
            )
            return False
        return True
