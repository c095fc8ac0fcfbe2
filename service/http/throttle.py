"""The login throttle: at most `limit` wrong tries per `window_seconds`, counted per address and per account.

Per address stops one machine guessing; per account stops many machines sharing the guessing of one key (or,
once there are named accounts, one person's password). While either count is full every try is refused with
429 and Retry-After, the right key included: otherwise a guesser would learn the key from the one answer that
is not 429. Refused tries are not counted (the window simply runs out), and a success wipes nothing: with
named accounts, someone who knows their own password could otherwise reset their address's count between
guesses at another one. The cost is that a flood of wrong tries locks staff out of the login page for up to a
minute; programs with the key in their Authorization header are not affected.

The counts live in memory: a restart forgets them, which costs a guesser a restart per minute.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

LIMIT = 10
WINDOW_SECONDS = 60.0
MAX_TRACKED = 10_000  # distinct addresses/accounts remembered at once; stale ones are dropped first


class LoginThrottle:
    """Sliding-window counts of wrong login tries."""

    def __init__(
        self,
        limit: int = LIMIT,
        window_seconds: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window_seconds
        self._clock = clock
        self._tries: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str, account: str) -> int | None:
        """Whole seconds until a try from `address` for `account` is allowed again; None when it is now."""
        now = self._clock()
        with self._lock:
            waits = [self._wait(key, now) for key in _keys(address, account)]
        longest = max(waits)
        return math.ceil(longest) if longest > 0 else None

    def failed(self, address: str, account: str) -> None:
        """Count one wrong try."""
        now = self._clock()
        with self._lock:
            keys = _keys(address, account)
            if len(self._tries) + len(keys) > MAX_TRACKED:
                self._forget_stale(now, room=len(keys))
            for key in keys:
                self._tries.setdefault(key, deque()).append(now)

    def forgive(self, address: str, account: str) -> None:
        """Take back the try `failed` counted last for this pair: it turned out right.

        A password check takes a while, so a try is counted before it runs (a burst cannot slip past the
        limit meanwhile) and taken back when it succeeds; only that one try, so a success wipes nothing else.
        """
        with self._lock:
            for key in _keys(address, account):
                tries = self._tries.get(key)
                if tries:
                    tries.pop()

    def _wait(self, key: str, now: float) -> float:
        tries = self._tries.get(key)
        if tries is None:
            return 0.0
        while tries and tries[0] <= now - self.window:
            tries.popleft()
        if not tries:
            del self._tries[key]
            return 0.0
        if len(tries) < self.limit:
            return 0.0
        # Allowed again when enough of the oldest tries have left the window to get below the limit.
        return max(tries[len(tries) - self.limit] + self.window - now, 1.0)

    def _forget_stale(self, now: float, room: int) -> None:
        for key in [key for key, tries in self._tries.items() if not tries or tries[-1] <= now - self.window]:
            del self._tries[key]
        while self._tries and len(self._tries) + room > MAX_TRACKED:
            # Still full of fresh counts: a flood of addresses. Forget the longest-known ones first; that
            # frees an address early, but unbounded memory would take the whole service down instead.
            del self._tries[next(iter(self._tries))]


def _keys(address: str, account: str) -> tuple[str, str]:
    return f"address:{address}", f"account:{account}"
