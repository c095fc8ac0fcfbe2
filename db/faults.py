"""Storage faults a running service waits out: a full disk, a read-only or locked database, I/O errors.

SQLite reports them as text (and sometimes an errno); they become `StorageUnavailable` with a plain message,
so the worker, the watchers and the API can tell a transient fault from a bug.
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


def storage_fault(exc: BaseException, path: Path) -> StorageUnavailable | None:
    """The transient storage fault behind `exc` (disk full, read-only, locked, I/O), or None."""
    text_ = str(getattr(exc, "orig", None) or exc).lower()
    errno_ = getattr(getattr(exc, "orig", exc), "errno", None)
    kind = next((kind for needle, kind in _FAULTS if needle in text_), None)
    if kind is None and errno_ == 28:  # ENOSPC
        kind = "disk_full"
    if kind is None and errno_ == 30:  # EROFS
        kind = "read_only"
    if kind is None:
        return None
    message: Message
    if kind == "io":
        message = msg("storage_io", path=path, reason=text_.strip()[:200])
    else:
        message = msg(f"storage_{kind}", path=path)
    return StorageUnavailable(message, kind)
