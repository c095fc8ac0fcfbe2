"""The single writer for the SQLite history (WAL mode, short sessions, one lock for every write).

Datasette and Frigate funnel SQLite writes through one place; we do the same with a lock rather than a
thread because our writes are tiny and the lock keeps call sites synchronous and simple. Readers never take
the lock: WAL lets them read while a write is in progress. A second process (`tuwen ask` beside a running
`tuwen serve`) is serialised by SQLite's own locking and `busy_timeout`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from db import grams
from db.faults import storage_fault
from db.models import Job, JobStatus, ReviewStatus, utcnow
from db.reads import MAX_ROW_ID, JobReads
from service.messages import msg
from service.retry import Availability

log = logging.getLogger(f"tuwen.{__name__}")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class ReviewRejected(ValueError):
    """A review the store refuses; `reason` is 'verdict', 'correction_missing' or 'not_done'."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Store(JobReads):
    """All reads and writes of the job history."""

    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.path = db_path
        self.engine: Engine = create_engine(
            f"sqlite:///{db_path}",
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock()
        self._version_lock = threading.Lock()
        self._version_conn: sqlite3.Connection | None = None
        # Whether writes work right now (disk full, remounted read-only, locked): /health shows it.
        self.health = Availability(
            log,
            "database",
            describe_down=lambda reason: reason,
            describe_up=lambda: str(msg("storage_recovered")),
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (creates the database on first start)."""
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.set_main_option("sqlalchemy.url", str(self.engine.url))
        with self._write_lock, self.engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

    def data_version(self) -> int:
        """SQLite's `data_version`: it changes when another connection (another process) commits.

        The worker polls it while idle, so a job written by `tuwen ask` in another process is claimed
        within a fraction of a second without querying the jobs table over and over.
        """
        with self._version_lock:
            if self._version_conn is None:
                self._version_conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            return int(self._version_conn.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        """Checkpoint the WAL and release connections."""
        with self._version_lock:
            if self._version_conn is not None:
                self._version_conn.close()
                self._version_conn = None
        with self._write_lock:
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            except DBAPIError as exc:
                # A full or read-only disk at stop: the WAL is checkpointed at the next open instead.
                log.warning("could not checkpoint the database at stop: %s", getattr(exc, "orig", exc))
            self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One write transaction through the single writer; storage faults become `StorageUnavailable`."""
        try:
            with self._write_lock, self._sessions.begin() as session:
                yield session
        except (DBAPIError, OSError) as exc:
            fault = storage_fault(exc, self.path)
            if fault is None:
                raise
            self.health.failed(str(fault.message), code=fault.kind, error=True)
            raise fault from exc
        if not self.health.available:
            self.health.ok()

    def _read(self) -> Session:
        return self._sessions()

    def read_session(self) -> Session:
        """A short read-only session for query modules beside the store (db.history); never write with it."""
        return self._sessions()

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """A short write transaction through the single writer, for store modules beside this one."""
        with self._write() as session:
            yield session

    # -- writes ------------------------------------------------------------------------------------

    def add_job(self, **fields: Any) -> Job:
        """Insert a job row (status queued unless given) and return it."""
        with self._write() as session:
            job = Job(**fields)
            session.add(job)
            session.flush()
            return job

    def claim(
        self,
        limit: int,
        *,
        uids: Sequence[str] | None = None,
        alone_at_or_below: int = 0,
        node: str | None = None,
        priorities: tuple[int, int] | None = None,
    ) -> list[Job]:
        """Atomically move up to `limit` due queued jobs of the most urgent priority to `running`.

        Jobs with priority `alone_at_or_below` or more urgent are claimed one at a time: someone is waiting
        on each of them, often watching the answer stream in. `priorities` (lowest, highest value) limits
        the claim to that range (a concurrent dispatcher fills its interactive and backlog slots apart).
        """
        now = utcnow()
        with self._write() as session:
            query = (
                select(Job.id, Job.priority)
                .where(Job.status == JobStatus.QUEUED)
                .where(or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= now))
                .order_by(Job.priority, Job.id)
                .limit(limit)
            )
            if uids is not None:
                query = query.where(Job.uid.in_(list(uids)))
            if priorities is not None:
                query = query.where(Job.priority.between(*priorities))
            rows = session.execute(query).all()
            if not rows:
                return []
            # A batch never mixes priorities: interactive jobs are answered alone, and at once.
            ids = [row.id for row in rows if row.priority == rows[0].priority]
            if rows[0].priority <= alone_at_or_below:
                ids = ids[:1]
            session.execute(
                update(Job)
                .where(Job.id.in_(ids))
                .values(status=JobStatus.RUNNING, started_at=now, attempts=Job.attempts + 1, node=node)
            )
            return list(session.scalars(select(Job).where(Job.id.in_(ids)).order_by(Job.id)))

    def finish(self, job_id: int, **fields: Any) -> Job:
        """Record a job's final state (done or failed) with its answer or error."""
        with self._write() as session:
            job = session.get_one(Job, job_id)
            for key, value in fields.items():
                setattr(job, key, value)
            job.finished_at = fields.get("finished_at", utcnow())
            job.next_attempt_at = None
            return job

    def schedule_retry(self, job_id: int, when: datetime, error: str, error_code: str) -> None:
        """Put a job back in the queue, due at `when`."""
        with self._write() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(status=JobStatus.QUEUED, next_attempt_at=when, error=error, error_code=error_code)
            )

    def requeue(self, job_ids: Sequence[int], *, refund_attempt: bool = True) -> int:
        """Return claimed jobs to the queue (shutdown, or a worker restart) without counting an attempt."""
        if not job_ids:
            return 0
        with self._write() as session:
            values: dict[str, Any] = {"status": JobStatus.QUEUED, "started_at": None}
            if refund_attempt:
                values["attempts"] = func.max(Job.attempts - 1, 0)
            result = session.execute(
                update(Job).where(Job.id.in_(list(job_ids)), Job.status == JobStatus.RUNNING).values(**values)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def requeue_timed_out(self, job_id: int) -> None:
        """Give a job that outlived the job timeout its one retry (the attempt is not counted)."""
        with self._write() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
                .values(
                    status=JobStatus.QUEUED,
                    started_at=None,
                    timeouts=Job.timeouts + 1,
                    attempts=func.max(Job.attempts - 1, 0),
                )
            )

    def running_claims(self) -> list[tuple[int, str | None]]:
        """(job id, claiming node) of every running job."""
        with self._read() as session:
            rows = session.execute(select(Job.id, Job.node).where(Job.status == JobStatus.RUNNING)).all()
            return [(int(job_id), node) for job_id, node in rows]

    def retry_failed(self, job_ids: Sequence[int] | None = None) -> int:
        """Queue failed jobs again (all, or the given ids) with a fresh attempt count."""
        with self._write() as session:
            query = update(Job).where(Job.status == JobStatus.FAILED)
            if job_ids is not None:
                query = query.where(Job.id.in_(list(job_ids)))
            result = session.execute(
                query.values(
                    status=JobStatus.QUEUED, attempts=0, next_attempt_at=None, error=None, error_code=None
                )
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def set_review(
        self, job_id: int, verdict: str, correction: str | None = None, *, reviewed_by: str | None = None
    ) -> Job | None:
        """Record a person's verdict on a done job; returns the updated job, or None when there is none.

        `reviewed_by` is who gave it (an account name, `api-key`), kept in `jobs.reviewed_by`.

        'correct' and 'unreviewed' clear any earlier correction (a verdict of "right as it stands" with a
        different text beside it would be contradictory); 'corrected' needs a non-blank correction. The
        model's own answer is never changed. Raises `ReviewRejected` for an unknown verdict, a missing
        correction or a job that is not done.
        """
        if verdict not in ReviewStatus.ALL:
            raise ReviewRejected("verdict", f"unknown verdict {verdict!r}")
        text = (correction or "").strip()
        if verdict == ReviewStatus.CORRECTED and not text:
            raise ReviewRejected("correction_missing", "a 'corrected' verdict needs the correction text")
        if not 0 < job_id <= MAX_ROW_ID:
            return None
        with self._write() as session:
            job = session.get(Job, job_id)
            if job is None:
                return None
            if job.status != JobStatus.DONE:
                raise ReviewRejected("not_done", f"only done jobs can be reviewed, not {job.status!r} ones")
            job.review_status = verdict
            job.correction = text if verdict == ReviewStatus.CORRECTED else None
            job.reviewed_at = None if verdict == ReviewStatus.UNREVIEWED else utcnow()
            job.reviewed_by = None if verdict == ReviewStatus.UNREVIEWED else reviewed_by
            return job

    def mark_catalogued(self, job_id: int) -> None:
        """Record that the job's catalogue row is on disk."""
        with self._write() as session:
            session.execute(update(Job).where(Job.id == job_id).values(catalogued=1))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers don't block the writer; NORMAL sync is durable across process crashes in WAL mode.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # The short-term search index's triggers call it (db/grams.py).
    grams.register(dbapi_connection)
