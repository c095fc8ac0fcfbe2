"""Pausing the backlog: while paused, no folder or batch job starts; questions people ask still do.

The flag is the `backlog_paused` setting in the database (`db/settings.py`), so a restart keeps it and every
node sharing the database sees it. The worker asks `paused()` before each claim (remembered for
`RECHECK_SECONDS`, so a busy worker does not read the setting per job) and then claims only priorities up to
`Priority.CLI`: `Priority.BACKLOG` (watched folders, `tuwen batch`, re-runs of file jobs) waits. Jobs already
running finish. The worker owns one instance and the HTTP routes set the pause through it, so this process
sees a pause at its next claim; another process on the same database within `RECHECK_SECONDS`.
`Store.claim` is not changed: the claim is simply given a narrower priority range.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from db.settings import BACKLOG_PAUSED, SettingsStore
from db.store import Store
from service.events import Priority

log = logging.getLogger(f"tuwen.{__name__}")

RECHECK_SECONDS = 1.0
LOWEST = -1_000_000  # the most urgent priority a claim range starts at
_PAUSED_TOP = int(Priority.BACKLOG) - 1  # the least urgent priority still claimed while paused


class BacklogPause:
    """Read and set whether the backlog is paused."""

    def __init__(self, store: Store) -> None:
        self.settings = SettingsStore(store)
        self._lock = threading.Lock()
        self._seen = (-RECHECK_SECONDS, False)

    def paused(self) -> bool:
        """Whether the backlog is paused now (read from the database at most once per RECHECK_SECONDS)."""
        with self._lock:
            checked_at, paused = self._seen
            now = time.monotonic()
            if now - checked_at >= RECHECK_SECONDS:
                try:
                    paused = bool(self.settings.value(BACKLOG_PAUSED, False))
                except Exception:  # the database cannot be read: keep the last answer (the claim says why)
                    log.debug("backlog pause unreadable; keeping %s", paused, exc_info=True)
                self._seen = (now, paused)
            return paused

    def state(self) -> dict[str, Any]:
        """`{"paused", "since", "by"}` for /health and /api/watches."""
        row = self.settings.get(BACKLOG_PAUSED)
        paused = bool(row is not None and row.value)
        return {
            "paused": paused,
            "since": row.updated_at.isoformat() if row is not None and paused else None,
            "by": row.updated_by if row is not None and paused else None,
        }

    def set(self, paused: bool, by: str) -> None:
        """Pause or resume, as `by` (kept with the setting)."""
        self.settings.set(BACKLOG_PAUSED, paused, by)
        with self._lock:
            self._seen = (time.monotonic(), paused)

    def claim_range(self, priorities: tuple[int, int] | None) -> tuple[bool, tuple[int, int] | None]:
        """(whether to claim at all, the priority range to claim): `priorities` as given while running;
        narrowed to leave the backlog out while paused, and (False, None) when nothing else is in it."""
        if not self.paused():
            return True, priorities
        low, high = priorities if priorities is not None else (LOWEST, 1_000_000)
        high = min(high, _PAUSED_TOP)
        return (True, (low, high)) if low <= high else (False, None)
