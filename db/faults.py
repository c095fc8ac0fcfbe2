"""Storage faults a running service waits out: a full disk, a read-only or locked database, I/O errors.

SQLite reports them as text (and sometimes an errno); PostgreSQL as an SQLSTATE code, and a server that is
down or restarting as a connection error without one. They become `StorageUnavailable` with a plain
message, so the worker, the watchers and the API can tell a transient fault from a bug.
"""

from __future__ import annotations

from pathlib import Path

from service.errors import StorageUnavailable
from service.messages import Message, msg

# SQLite's own words for the faults a running service should wait out (sqlite3 error messages and codes).
_FAULTS: tuple[tuple[str, str], ...] = (
    ("database or disk is full", "disk_full"),
    ("no space left", "disk_full"),
    ("readonly database", "read_only"),
    ("read-only file system", "read_only"),
    ("database is locked", "busy"),
    ("database table is locked", "busy"),
    ("disk i/o error", "io"),
    ("unable to open database file", "io"),
)


# PostgreSQL's SQLSTATE codes (and classes, by their first two characters) for the same faults.
_PG_FAULTS: dict[str, str] = {
    "08": "unreachable",  # connection exception
    "57P01": "unreachable",  # admin shutdown (a restart)
    "57P02": "unreachable",  # crash shutdown
    "57P03": "unreachable",  # cannot connect now (starting up, recovering)
    "53100": "disk_full",
    "53200": "busy",  # out of memory
    "53300": "busy",  # too many connections
    "25006": "read_only",  # read-only transaction: a standby, or default_transaction_read_only
    "40001": "busy",  # serialization failure
    "40P01": "busy",  # deadlock detected (the other transaction went through)
    "55P03": "busy",  # lock not available
}


def storage_fault(exc: BaseException, path: Path | str) -> StorageUnavailable | None:
    """The transient storage fault behind `exc` (disk full, read-only, locked, I/O, unreachable), or None."""
    text_ = str(getattr(exc, "orig", None) or exc).lower()
    errno_ = getattr(getattr(exc, "orig", exc), "errno", None)
    kind = _postgresql_fault(exc) or next((kind for needle, kind in _FAULTS if needle in text_), None)
    if kind is None and errno_ == 28:  # ENOSPC
        kind = "disk_full"
    if kind is None and errno_ == 30:  # EROFS
        kind = "read_only"
    if kind is None:
        return None
    message: Message
    if kind in ("io", "unreachable"):
        message = msg(f"storage_{kind}", path=path, reason=text_.strip()[:200])
    else:
        message = msg(f"storage_{kind}", path=path)
    return StorageUnavailable(message, kind)


def _postgresql_fault(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None)
    if orig is None or type(orig).__module__.split(".")[0] != "psycopg":
        return None
    state = getattr(orig, "sqlstate", None)
    if state is None:
        # No SQLSTATE: the connection itself failed (refused, reset, the server went away mid-query).
        return "unreachable" if type(orig).__name__ in ("OperationalError", "InterfaceError") else None
    return _PG_FAULTS.get(state) or _PG_FAULTS.get(state[:2])
