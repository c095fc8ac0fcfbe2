"""`tuwen backup DEST`: a consistent copy of the SQLite history, safe while `tuwen serve` writes.

The database runs in WAL mode, so a plain `cp` of `tuwen.sqlite3` while the service runs can miss the
transactions still in `tuwen.sqlite3-wal`, or catch the file halfway through a checkpoint: a copy that
opens, looks fine and is not. SQLite's online backup API (`sqlite3.Connection.backup`) copies a snapshot
under a read transaction instead; in WAL mode readers never block the writer, so the service keeps
answering scans meanwhile.

The copy is written under a temporary name, switched out of WAL mode (one self-contained file), checked
with `PRAGMA integrity_check` and only then renamed into place, so a failed or interrupted backup never
leaves a file that looks like a good one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from service.config import Config
from service.errors import TuwenError
from service.messages import msg

SUFFIX = ".sqlite3"
_TMP_SUFFIX = ".tuwen-tmp"  # ignored by watched folders, like the sidecars' temporary files


class BackupError(TuwenError):
    """The backup could not be made; the message says why and what to do."""


@dataclass(frozen=True)
class BackupResult:
    """Where the verified copy is and how many rows each table holds in it."""

    path: Path
    counts: dict[str, int]


def backup_command(config: Config, args: argparse.Namespace) -> int:
    """`tuwen backup DEST`: print the copy's path and row counts; exit 0, or 1 with a plain message."""
    if config.storage.database_url.get_secret_value():
        print(str(msg("backup_postgresql")), file=sys.stderr)  # the server's own tools back it up
        return 1
    try:
        result = backup_database(config.db_path, args.dest)
    except BackupError as exc:
        print(str(exc.message), file=sys.stderr)
        return 1
    print(str(msg("backup_written", path=result.path)))
    for table, count in result.counts.items():
        print(f"  {table}: {count}")
    return 0


def backup_database(source: Path, dest: str | os.PathLike[str], now: datetime | None = None) -> BackupResult:
    """Copy `source` into `dest` (a file, or a folder → `tuwen-YYYYMMDD-HHMMSS.sqlite3` in it) and verify it.

    `dest` is a folder when one exists there or when it ends with a slash (the folder is then created).

    Raises `BackupError` for a missing database, an unwritable destination, a failed copy or a copy that
    fails the integrity check; nothing is left at the destination then.
    """
    if not source.is_file():
        raise BackupError(msg("backup_no_database", path=source))
    target = _target_path(dest, now or datetime.now().astimezone())
    if target.exists() and target.resolve() == source.resolve():
        raise BackupError(msg("backup_same_file", path=source))
    tmp = target.with_name(target.name + _TMP_SUFFIX)
    try:
        copy = sqlite3.connect(tmp)
        # Touch the file now: an unwritable folder fails here, before the source is opened at all.
        copy.execute("PRAGMA user_version").fetchone()
        copy.execute("CREATE TABLE IF NOT EXISTS _probe(x)")
        copy.execute("DROP TABLE _probe")
    except (sqlite3.Error, OSError) as exc:
        _remove(tmp)
        raise BackupError(msg("backup_dest_unwritable", path=target, reason=_reason(exc))) from exc
    try:
        counts = _copy_and_verify(source, copy)
    except BackupError:
        copy.close()
        _remove(tmp)
        raise
    except (sqlite3.Error, OSError) as exc:
        copy.close()
        _remove(tmp)
        raise BackupError(msg("backup_failed", reason=_reason(exc))) from exc
    copy.close()
    try:
        _fsync(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        _remove(tmp)
        raise BackupError(msg("backup_dest_unwritable", path=target, reason=_reason(exc))) from exc
    return BackupResult(target, counts)


def _copy_and_verify(source: Path, copy: sqlite3.Connection) -> dict[str, int]:
    # mode=rw rather than the default rwc: never create an empty database where the real one was expected.
    # (mode=ro would gain nothing: SQLite still creates a WAL database's -wal and -shm files to read it.)
    with contextlib.closing(
        sqlite3.connect(f"{source.resolve().as_uri()}?mode=rw", uri=True, timeout=30)
    ) as src:
        # One step (pages=-1): the whole snapshot under one read transaction, however much the service
        # writes meanwhile; a step-wise copy would restart after every write by another connection.
        src.backup(copy)
    copy.execute("PRAGMA journal_mode=DELETE").fetchone()
    problems = [row[0] for row in copy.execute("PRAGMA integrity_check").fetchall()]
    if problems != ["ok"]:
        raise BackupError(msg("backup_integrity_failed", reason="; ".join(map(str, problems[:3]))))
    return {name: int(copy.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]) for name in _tables(copy)}


def _tables(conn: sqlite3.Connection) -> list[str]:
    """Ordinary tables, by name; not the full-text index's virtual and shadow tables (noise to a reader)."""
    try:
        rows = conn.execute("PRAGMA table_list").fetchall()  # SQLite 3.37+: (schema, name, type, …)
        names = [row[1] for row in rows if row[0] == "main" and row[2] == "table"]
    except sqlite3.Error:
        names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return sorted(name for name in names if not name.startswith("sqlite_"))


def _target_path(spelt: str | os.PathLike[str], now: datetime) -> Path:
    """`dest` itself, or a new time-stamped name inside it when it is (or is spelt as) a folder."""
    # Read the slash from the text as typed: pathlib drops a trailing one.
    spelt_as_folder = os.fspath(spelt).endswith(("/", os.sep))
    dest = Path(spelt)
    if not dest.is_dir() and not spelt_as_folder:
        return dest
    with contextlib.suppress(OSError):  # an uncreatable folder is reported when the copy is opened
        dest.mkdir(parents=True, exist_ok=True)
    stem = f"tuwen-{now:%Y%m%d-%H%M%S}"
    target = dest / f"{stem}{SUFFIX}"
    number = 2
    while target.exists():  # two backups within one second keep both
        target = dest / f"{stem}-{number}{SUFFIX}"
        number += 1
    return target


def _fsync(path: Path) -> None:
    # The rename is only as durable as the data behind it (a NAS share or a USB disk pulled right after).
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    for leftover in [path] + [path.with_name(path.name + end) for end in ("-journal", "-wal", "-shm")]:
        with contextlib.suppress(OSError):
            leftover.unlink()


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc)
