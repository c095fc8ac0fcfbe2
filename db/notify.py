"""Wake-ups across processes on PostgreSQL: LISTEN/NOTIFY on the channel `tuwen_jobs`, polling as fallback.

On SQLite an idle worker polls `PRAGMA data_version`, which changes when another connection commits. The
PostgreSQL counterpart is a notification: every write that gives the queue work (a submitted job, a
re-queued or retried one) sends `NOTIFY tuwen_jobs` in its own transaction, so it arrives only once the work
is committed and visible. One listening connection per store, outside the pool, runs on a small daemon
thread and counts the notifications other stores sent; `Store.data_version()` returns that count, so the
worker's idle loop (`service.worker_run`) is the same for both databases.

When the listening connection cannot be opened or breaks (the server restarts, a proxy cuts idle
connections), the count goes up every `FALLBACK_POLL_SECONDS` instead: an idle worker then looks at the
queue that often, as if polling, until the listener is back.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger(f"tuwen.{__name__}")

CHANNEL = "tuwen_jobs"
FALLBACK_POLL_SECONDS = 1.0
RECONNECT_SECONDS = 5.0
_WAIT_SECONDS = 0.5  # how often the listening thread looks at its stop flag


class ChangeListener:
    """Counts NOTIFYs on `CHANNEL` from other stores (payload != `token`), on a daemon thread."""

    def __init__(self, connect_args: tuple[list[Any], dict[str, Any]], token: str) -> None:
        self._connect_args = connect_args
        self._token = token
        self._count = 0
        self._listening = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def listening(self) -> bool:
        """Whether a LISTEN connection is up now (otherwise the count advances by the clock)."""
        return self._listening

    def start(self) -> None:
        """Start listening; waits briefly for the first connection so the first change is not missed."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="tuwen-listen", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def version(self) -> int:
        """A number that changes when another store announced work (or, without a listener, by the clock)."""
        with self._lock:
            if self._listening:
                return self._count
            return self._count + int(time.monotonic() / FALLBACK_POLL_SECONDS)

    def stop(self) -> None:
        """Stop listening and close the connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(_WAIT_SECONDS * 4)

    def _bump(self) -> None:
        with self._lock:
            self._count += 1

    def _run(self) -> None:
        import psycopg

        args, kwargs = self._connect_args
        warned = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(*args, **{**kwargs, "autocommit": True}) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    with self._lock:
                        self._listening = True
                        self._count += 1  # anything committed while we were not listening: look once
                    self._ready.set()
                    if warned:
                        log.info("listening for queue changes again")
                        warned = False
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=_WAIT_SECONDS):
                            if note.payload != self._token:
                                self._bump()
            except psycopg.Error as exc:
                if not warned:
                    log.warning("cannot listen for queue changes (%s); polling the queue meanwhile", exc)
                    warned = True
            finally:
                with self._lock:
                    self._listening = False
                self._ready.set()
            self._stop.wait(RECONNECT_SECONDS)
