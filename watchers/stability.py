"""Decide when a file in a watched folder is finished being written.

paperless-ngx's most common bug reports are half-written scans consumed too early (scanners and SMB copies
write in pieces, and inotify reports the first piece). A file is taken only when it has been quiet for
`quiet_seconds` with the same size and mtime across observations. No mtime heuristics: copies that preserve
an old mtime while the size still grows are common on NAS shares.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class _Observation:
    size: int
    mtime_ns: int
    since: float


class StabilityTracker:
    """Paths waiting to settle. Thread-safe: watchdog threads touch, the watcher's tick thread polls."""

    def __init__(self, quiet_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet_seconds = quiet_seconds
        self._clock = clock
        self._pending: dict[Path, _Observation | None] = {}
        self._lock = threading.Lock()

    def touch(self, path: Path) -> None:
        """Something happened to `path`: (re)start watching it."""
        with self._lock:
            self._pending[path] = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def __contains__(self, path: object) -> bool:
        with self._lock:
            return path in self._pending

    def poll(self) -> list[tuple[Path, os.stat_result]]:
        """Stat every waiting path; return (and forget) those that have settled."""
        now = self._clock()
        ready: list[tuple[Path, os.stat_result]] = []
        with self._lock:
            items = list(self._pending.items())
        for path, seen in items:
            try:
                st = path.stat()
            except OSError:
                with self._lock:  # deleted or moved away before it settled
                    self._pending.pop(path, None)
                continue
            current = (st.st_size, st.st_mtime_ns)
            with self._lock:
                if path not in self._pending:
                    continue
                if seen is None or (seen.size, seen.mtime_ns) != current:
                    self._pending[path] = _Observation(st.st_size, st.st_mtime_ns, now)
                elif now - seen.since >= self.quiet_seconds:
                    del self._pending[path]
                    ready.append((path, st))
        return ready
