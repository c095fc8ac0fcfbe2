"""Opening the database at start, with a plain answer when it cannot be used.

A corrupt file, a read-only disk, a full disk or a data folder the service may not write: each gets one
bilingual paragraph saying what is wrong and what to do (restore the backup, check permissions), and
`tuwen serve` exits non-zero so systemd or compose restarts it once the problem is fixed, rather than a
SQLAlchemy traceback or a service that runs without being able to record anything.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from db.store import Store
from service import redact
from service.config import Config
from service.errors import StartupError, StorageUnavailable
from service.messages import msg

log = logging.getLogger(f"tuwen.{__name__}")

_CORRUPT = ("file is not a database", "malformed", "database corrupt", "not a database")


def check_data_dir(config: Config) -> None:
    """Create `[storage] data_dir` if needed and prove it is writable; `StartupError` when not."""
    data_dir = config.storage.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".tuwen-probe-"):
            pass
    except OSError as exc:
        raise StartupError(msg("data_dir_unusable", path=data_dir, reason=exc.strerror or exc)) from exc


def open_store(config: Config) -> Store:
    """The migrated store, proven writable; `StartupError` with the reason and the remedy otherwise."""
    check_data_dir(config)
    target = config.db_target
    path: Path | str = target
    try:
        store = Store(target, data_dir=config.storage.data_dir, name=f"tuwen {config.node.name}")
        path = store.shown  # the password masked from here on
        store.migrate()
        if not store.postgresql:
            # Take the write lock once: a read-only file (or folder, for the WAL files) fails here.
            raw = store.engine.raw_connection()
            try:
                raw.driver_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
                raw.driver_connection.execute("ROLLBACK")  # type: ignore[union-attr]
            finally:
                raw.close()
    except StorageUnavailable as exc:
        raise _startup_error(exc.kind, path, str(exc.message)) from exc
    except (DBAPIError, OSError) as exc:
        reason = redact.scrub(str(getattr(exc, "orig", None) or exc))
        lowered = reason.lower()
        if any(needle in lowered for needle in _CORRUPT):
            raise StartupError(msg("db_corrupt", path=path, reason=reason)) from exc
        from db.faults import storage_fault

        fault = storage_fault(exc, path)
        raise _startup_error(fault.kind if fault else "io", path, reason) from exc
    return store


def _startup_error(kind: str, path: os.PathLike[str] | str, reason: str) -> StartupError:
    if kind == "disk_full":
        return StartupError(msg("db_disk_full", path=path))
    if kind == "read_only":
        return StartupError(msg("db_read_only", path=path, reason=reason))
    return StartupError(msg("db_cannot_open", path=path, reason=reason))
