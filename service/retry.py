"""The reliability toolkit every part of tuwen uses: one backoff, one availability tracker.

- `Backoff`: exponential delays with a cap and a little jitter (so a dozen watchers that lost the same NAS
  do not hammer it in lockstep), reset after a success. Used wherever something is tried again: loading the
  model, restarting a crashed source, writing to a database that is briefly read-only or full.
- `Availability`: Home Assistant's coordinator rule for a dependency that comes and goes: log
  "unavailable" once when it goes, "recovered" once when it is back, and keep the reason for `/health`,
  instead of one log line per failed attempt.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Availability", "Backoff"]


@dataclass
class Backoff:
    """Delays `base`, `base·factor`, … up to `cap` seconds, each ±`jitter`; `reset()` starts over."""

    base: float = 1.0
    cap: float = 60.0
    factor: float = 2.0
    jitter: float = 0.1
    attempts: int = field(default=0, init=False)

    def next_delay(self) -> float:
        """The delay before the next attempt (and count this one)."""
        delay = min(self.cap, self.base * self.factor**self.attempts)
        self.attempts += 1
        if self.jitter:
            delay *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, min(delay, self.cap))

    def reset(self) -> None:
        """Start from `base` again (after a success)."""
        self.attempts = 0

    def wait(self, stop: threading.Event) -> bool:
        """Sleep the next delay unless `stop` is set meanwhile; True when stopping."""
        return stop.wait(self.next_delay())


class Availability:
    """Whether a dependency (a folder, the database, a chat platform) works now, logged on change only.

    `failed(reason)` logs at WARNING the first time only (ERROR with `error=True`); `ok()` logs "recovered"
    once after a failure. `state`, `reason` and `since` are read by `/health`. Thread-safe.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        describe_down: Callable[[str], str] | None = None,
        describe_up: Callable[[], str] | None = None,
    ) -> None:
        self.logger = logger
        self.what = what
        self._down_text = describe_down or (lambda reason: f"{what} unavailable: {reason}")
        self._up_text = describe_up or (lambda: f"{what} available again")
        self._lock = threading.Lock()
        self.available = True
        self.reason: str | None = None
        self.code: str | None = None
        self.since = time.time()
        self.failures = 0

    def failed(self, reason: str, *, code: str | None = None, error: bool = False) -> bool:
        """Record a failure; True when this is the change from available (the one that was logged)."""
        with self._lock:
            self.failures += 1
            first = self.available
            changed = first or reason != self.reason
            self.available, self.reason, self.code = False, reason, code
            if first:
                self.since = time.time()
        if first:
            self.logger.log(logging.ERROR if error else logging.WARNING, "%s", self._down_text(reason))
        elif changed:
            self.logger.debug("%s still unavailable: %s", self.what, reason)
        return first

    def ok(self) -> bool:
        """Record a success; True when this ends an outage (and "recovered" was logged)."""
        with self._lock:
            if self.available:
                return False
            self.available, self.reason, self.code = True, None, None
            self.since = time.time()
            self.failures = 0
        self.logger.info("%s", self._up_text())
        return True
