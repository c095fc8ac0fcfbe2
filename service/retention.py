"""Visitors' photos are kept only as long as `[storage] keep_uploads_days` says (default 30; 0 keeps them).

Photos sent from the kiosk, the web page, the API and the chat bots are stored under `data_dir/uploads`
(content-addressed: one file however often it was sent; a photo sent again counts from its last use). Once
older than the limit they are deleted, and with them the cached thumbnails under `data_dir/thumbs`; the
history's text (questions, answers, reviews) stays. Staff scans in watched folders are never touched: they
are not uploads. China's PIPL asks that personal information be kept no longer than needed; the README's
privacy section says what is stored where and for how long.

The sweep runs at start and then every `SWEEP_SECONDS`, on a thread of its own; a failure is logged and the
next sweep tries again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(f"tuwen.{__name__}")

SWEEP_SECONDS = 6 * 3600
DAY_SECONDS = 86400


@dataclass(frozen=True)
class Swept:
    """What one sweep removed."""

    uploads: int
    thumbnails: int


def sweep(data_dir: Path, keep_days: float, *, now: float | None = None) -> Swept:
    """Delete uploads and thumbnails older than `keep_days` (nothing when `keep_days` is 0)."""
    if keep_days <= 0:
        return Swept(0, 0)
    cutoff = (time.time() if now is None else now) - keep_days * DAY_SECONDS
    return Swept(_remove_older(data_dir / "uploads", cutoff), _remove_older(data_dir / "thumbs", cutoff))


def _remove_older(folder: Path, cutoff: float) -> int:
    removed = 0
    if not folder.is_dir():
        return 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                if os.lstat(path).st_mtime < cutoff:
                    os.unlink(path)
                    removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("could not remove %s: %s", path, exc)
    return removed


class RetentionSweeper:
    """Runs `sweep` at start and every few hours until stopped."""

    def __init__(self, data_dir: Path, keep_days: float, interval: float = SWEEP_SECONDS) -> None:
        self.data_dir = data_dir
        self.keep_days = keep_days
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the sweeping thread (nothing to do when uploads are kept forever)."""
        if self.keep_days <= 0:
            log.info("uploads are kept without limit ([storage] keep_uploads_days = 0)")
            return
        self._thread = threading.Thread(target=self._run, name="tuwen-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sweeping."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                swept = sweep(self.data_dir, self.keep_days)
                if swept.uploads or swept.thumbnails:
                    log.info(
                        "removed %d upload(s) and %d thumbnail(s) older than %g days (keep_uploads_days)",
                        swept.uploads,
                        swept.thumbnails,
                        self.keep_days,
                    )
            except Exception:
                log.exception("the upload clean-up failed; it runs again later")
            self._stop.wait(self.interval)
