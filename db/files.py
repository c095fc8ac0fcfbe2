"""The `files` table: the last state tuwen saw of each watched (or batch) file.

One row per (source, source_ref, path bytes). A folder watcher loads its rows once at start (one query, not
one per file) and keeps them in memory; every decision about a settled file (unchanged, touched, replaced,
renamed, new) is made against that copy and written back here through the store's single writer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Connection, Table, delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from db.models import FileState, Job, JobStatus, WatchedFile, utcnow
from db.store import Store

_BATCH_ROWS = 1000
_FILES: Table = WatchedFile.__table__  # type: ignore[assignment]
# The columns of `uq_files_path`: what makes a row one file.
_FILE_KEY = ("source", "source_ref", "path")


@dataclass(frozen=True)
class FileSeen:
    """A file's recorded state (a plain copy: watchers keep thousands of these in memory)."""

    path: bytes
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    sha256: str | None
    job_id: int | None

    def same_stat(self, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> bool:
        """Whether nothing about the file changed: size, mtime, ctime and inode all as recorded.

        ctime and the inode catch what size and mtime alone miss: `cp -p` and `rsync -t` replace content
        while keeping both (cp -p changes ctime; rsync writes a new file and renames it, a new inode).
        """
        return (self.size, self.mtime_ns, self.ctime_ns, self.inode) == (size, mtime_ns, ctime_ns, inode)


# What `save_many_in` takes for each file: path bytes, display path, stat key, content hash, job id.
FileRow = tuple[bytes, str, tuple[int, int, int, int], str | None, int | None]


@cache
def _upsert(dialect: str) -> Any:
    """`INSERT … ON CONFLICT (source, source_ref, path) DO UPDATE` (SQLite and PostgreSQL both have it)."""
    statement = (postgresql_insert if dialect == "postgresql" else sqlite_insert)(_FILES)
    changed = {
        column.key: statement.excluded[column.key]
        for column in _FILES.columns
        if column.key not in _FILE_KEY and not column.primary_key
    }
    return statement.on_conflict_do_update(index_elements=list(_FILE_KEY), set_=changed)


def _seen(row: WatchedFile) -> FileSeen:
    return FileSeen(row.path, row.size, row.mtime_ns, row.ctime_ns, row.inode, row.sha256, row.job_id)


class FileStore:
    """Reads and writes of `files`, through the store's single writer."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def load(self, source: str, source_ref: str) -> dict[bytes, FileSeen]:
        """Every recorded file of one watch (or batch folder), by path bytes, read in batches."""
        found: dict[bytes, FileSeen] = {}
        last_id = 0
        with self.store.read_session() as session:
            while True:
                rows = session.scalars(
                    select(WatchedFile)
                    .where(
                        WatchedFile.source == source,
                        WatchedFile.source_ref == source_ref,
                        WatchedFile.id > last_id,
                    )
                    .order_by(WatchedFile.id)
                    .limit(_BATCH_ROWS)
                ).all()
                if not rows:
                    return found
                for row in rows:
                    found[row.path] = _seen(row)
                last_id = rows[-1].id

    def save(
        self,
        source: str,
        source_ref: str,
        path: bytes,
        display: str,
        stat: tuple[int, int, int, int],
        sha256: str | None,
        job_id: int | None,
    ) -> FileSeen:
        """Insert or update one file's state (`stat` is size, mtime_ns, ctime_ns, inode).

        One upsert statement (`INSERT … ON CONFLICT DO UPDATE`, which SQLite and PostgreSQL both have), not
        a read and an ORM flush. New scans are saved in rounds with their jobs (`save_many_in`).
        """
        with self.store.write_session() as session:
            return self.save_many_in(session, source, source_ref, [(path, display, stat, sha256, job_id)])[0]

    @staticmethod
    def save_many_in(
        executor: Session | Connection, source: str, source_ref: str, files: Sequence[FileRow]
    ) -> list[FileSeen]:
        """Insert or update many files' states in the caller's transaction: one upsert, many rows."""
        now = utcnow()
        values = [
            {
                "source": source,
                "source_ref": source_ref,
                "path": path,
                "display_path": display,
                "size": stat[0],
                "mtime_ns": stat[1],
                "ctime_ns": stat[2],
                "inode": stat[3],
                "sha256": sha256,
                "job_id": job_id,
                "state": FileState.PRESENT,
                "updated_at": now,
            }
            for path, display, stat, sha256, job_id in files
        ]
        if values:
            dialect = executor.dialect if isinstance(executor, Connection) else executor.get_bind().dialect
            executor.execute(_upsert(dialect.name), values)
        return [FileSeen(path, *stat, sha256, job_id) for path, _, stat, sha256, job_id in files]

    def move(
        self,
        source: str,
        source_ref: str,
        old: bytes,
        new: bytes,
        display: str,
        real_path: str,
    ) -> None:
        """A renamed file: its row and its job now name the new path (the history counts it once)."""
        with self.store.write_session() as session:
            row = session.scalars(
                select(WatchedFile).where(
                    WatchedFile.source == source,
                    WatchedFile.source_ref == source_ref,
                    WatchedFile.path == old,
                )
            ).first()
            if row is None:
                return
            # A row already at the new name (a file that was there before) is replaced by the moved one.
            session.execute(
                delete(WatchedFile).where(
                    WatchedFile.source == source,
                    WatchedFile.source_ref == source_ref,
                    WatchedFile.path == new,
                )
            )
            session.flush()
            row.path, row.display_path, row.updated_at = new, display, utcnow()
            if row.job_id is not None:
                job = session.get(Job, row.job_id)
                if job is not None:
                    job.file_path = display
                    job.images = [real_path, *list(job.images or [])[1:]]

    def forget(self, source: str, source_ref: str, path: bytes) -> None:
        """Drop a file's row (its file is gone for good)."""
        with self.store.write_session() as session:
            session.execute(
                delete(WatchedFile).where(
                    WatchedFile.source == source,
                    WatchedFile.source_ref == source_ref,
                    WatchedFile.path == path,
                )
            )

    def finished_jobs(self, source: str, source_ref: str) -> Iterator[Job]:
        """The job each recorded file's sidecars show, streamed in id order (start-up repair)."""
        last_id = 0
        while True:
            with self.store.read_session() as session:
                rows = session.execute(
                    select(WatchedFile.id, Job)
                    .join(Job, Job.id == WatchedFile.job_id)
                    .where(
                        WatchedFile.source == source,
                        WatchedFile.source_ref == source_ref,
                        WatchedFile.id > last_id,
                        WatchedFile.state == FileState.PRESENT,
                        Job.status.in_([JobStatus.DONE, JobStatus.FAILED]),
                    )
                    .order_by(WatchedFile.id)
                    .limit(_BATCH_ROWS)
                ).all()
            if not rows:
                return
            for _, job in rows:
                yield job
            last_id = rows[-1][0]
