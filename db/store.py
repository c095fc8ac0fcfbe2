"""The single writer for the job history: a SQLite file (WAL, short sessions, one lock) or PostgreSQL.

Datasette and Frigate funnel SQLite writes through one place; we do the same with a lock rather than a
thread because our writes are tiny and the lock keeps call sites synchronous and simple. Readers never take
the lock: WAL lets them read while a write is in progress. A second process (`tuwen ask` beside a running
`tuwen serve`) is serialised by SQLite's own locking and `busy_timeout`.

On PostgreSQL (`[storage] database_url`, db/engine.py) the same store is shared by several nodes: claims
skip rows another node has locked (db/claims.py), every write that gives the queue work sends a NOTIFY in
its own transaction, and `data_version()` counts the ones other stores sent (db/notify.py).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, case, select, text, update
from sqlalchemy.exc import DBAPIError, NoResultFound
from sqlalchemy.orm import Session, sessionmaker

from db.claims import claim_parameters, claim_statement, detached_job, jobs_of
from db.engine import POSTGRESQL, database_url, make_engine, psycopg_connect_args, shown, sqlite_path
from db.faults import storage_fault
from db.group_commit import GroupCommit
from db.hot_writes import Outcome, claimed_row, guarded_update, insert_jobs, job_rows
from db.models import Job, JobStatus, ReviewStatus, utcnow
from db.notify import CHANNEL, ChangeListener
from db.reads import MAX_ROW_ID, JobReads
from service.messages import msg
from service.retry import Availability

log = logging.getLogger(f"tuwen.{__name__}")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_ANYONE = object()  # `requeue`: whoever holds the jobs
_NOTIFY = text("SELECT pg_notify(:channel, :token)")


class ReviewRejected(ValueError):
    """A review the store refuses; `reason` is 'verdict', 'correction_missing' or 'not_done'."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Store(JobReads):
    """All reads and writes of the job history."""

    def __init__(self, target: Path | str, *, data_dir: Path | None = None, name: str = "tuwen") -> None:
        url = database_url(target)
        self.url = url
        self.postgresql = url.get_backend_name() == POSTGRESQL
        # What messages and logs call the database: the SQLite file, or the URL with its password masked.
        self.shown = shown(url)
        file = sqlite_path(url)
        self.path = file if file is not None else Path(self.shown)
        # Uploads, thumbnails and reports live here (beside the SQLite file unless told otherwise).
        self.data_dir = data_dir or (file.parent if file is not None else Path("data"))
        self.engine: Engine = make_engine(url, name=name)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock()
        self._version_lock = threading.Lock()
        self._version_conn: sqlite3.Connection | None = None
        self._token = uuid.uuid4().hex  # our own NOTIFYs carry it, so the listener skips them
        self._listener: ChangeListener | None = None
        self._claims = {uids: claim_statement(self.postgresql, uids) for uids in (False, True)}
        self._answers = GroupCommit(self._write_lock, self._transaction, lock_rows=self.postgresql)
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
        cfg.set_main_option("sqlalchemy.url", self.url.render_as_string(hide_password=False))
        with self._write_lock, self.engine.begin() as connection:
            if self.postgresql:
                # Two nodes starting together: one migrates, the other waits here, then finds it done.
                connection.execute(text("SELECT pg_advisory_xact_lock(7107)"))
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

    def data_version(self) -> int:
        """A number that changes when another process (another store) gave the queue work.

        SQLite: its `data_version`, which changes when another connection commits. PostgreSQL: the count
        of NOTIFYs other stores sent (or the clock while the listener is down). The worker polls it while
        idle, so a job written by `tuwen ask` or another node is claimed within a fraction of a second
        without querying the jobs table over and over.
        """
        with self._version_lock:
            if self.postgresql:
                if self._listener is None:
                    self._listener = ChangeListener(psycopg_connect_args(self.engine), self._token)
                    self._listener.start()
                return self._listener.version()
            if self._version_conn is None:
                self._version_conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            return int(self._version_conn.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        """Checkpoint the WAL (SQLite), stop listening (PostgreSQL) and release connections."""
        with self._version_lock:
            if self._version_conn is not None:
                self._version_conn.close()
                self._version_conn = None
            if self._listener is not None:
                self._listener.stop()
                self._listener = None
        with self._write_lock:
            if not self.postgresql:
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
        with self._faults(), self._write_lock, self._sessions.begin() as session:
            yield session

    @contextmanager
    def _write_connection(self) -> Iterator[Connection]:
        """A Core write transaction (the claim's hot path), with the same lock and fault handling."""
        with self._write_lock, self._transaction() as connection:
            yield connection

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A Core transaction with fault handling, for a caller already holding the writer."""
        with self._faults(), self.engine.begin() as connection:
            yield connection

    @contextmanager
    def _faults(self) -> Iterator[None]:
        try:
            yield
        except (DBAPIError, OSError) as exc:
            fault = storage_fault(exc, self.shown)
            if fault is None:
                raise
            self.health.failed(str(fault.message), code=fault.kind, error=True)
            raise fault from exc
        if not self.health.available:
            self.health.ok()

    def _announce_work(self, session: Session | Connection) -> None:
        """Wake other nodes' idle workers once this transaction commits (PostgreSQL; SQLite needs nothing)."""
        if self.postgresql:
            session.execute(_NOTIFY, {"channel": CHANNEL, "token": self._token})

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

    def add_job(self, *, also: Callable[[Session, Job], object] | None = None, **fields: Any) -> Job:
        """Insert a job row (status queued unless given) and return it.

        `also` writes more in the same transaction once the row has its id (a scan's `files` row): one
        commit instead of two, and never a job without the row that says which file it answers.
        """
        with self._write() as session:
            job = Job(**fields)
            session.add(job)
            session.flush()
            if also is not None:
                also(session, job)
            if job.status == JobStatus.QUEUED:
                self._announce_work(session)
            return job

    def add_jobs(
        self, rows: Sequence[dict[str, Any]], *, also: Callable[[Connection, list[int]], object] | None = None
    ) -> list[int]:
        """Insert many queued jobs (each row the same columns) in one transaction; their ids in order.

        A folder's backlog arrives as many settled files at once: one statement and one commit for all of
        them (db/hot_writes.py), with `also` writing their `files` rows in the same transaction.
        """
        values = job_rows(rows, gram_index=not self.postgresql)  # folded before the writer is taken
        with self._write_connection() as connection:
            ids = insert_jobs(connection, values)
            if also is not None:
                also(connection, ids)
            if ids:
                self._announce_work(connection)
            return ids

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
        An interactive job received by another node is left to it. One statement (db/claims.py); the jobs
        returned are detached copies of the claimed rows, `node` and `attempts` as claimed.
        """
        if uids is not None and not uids:
            return []
        now = utcnow()
        params = claim_parameters(
            limit, now, uids=uids, alone_at_or_below=alone_at_or_below, node=node, priorities=priorities
        )
        with self._write_connection() as connection:
            rows = connection.execute(self._claims[uids is not None], params).mappings().all()
        return jobs_of(rows)

    def finish(
        self,
        job_id: int,
        *,
        claim: tuple[str | None, int] | None = None,
        claimed: Job | None = None,
        **fields: Any,
    ) -> Job:
        """Record a job's final state (done or failed) with its answer or error.

        With `claim` (the claiming node and attempt count, as the claim returned them) nothing is written
        unless the job is still running under that very claim: a node taken for dead whose answer arrives
        after another node re-claimed the job must not answer it twice. `claimed` (the job as the claim
        returned it) saves a read. The row is returned as it stands (a detached copy).
        """
        known = None if claimed is None else claimed_row(claimed)
        outcome = Outcome(job_id, claim, fields, known)
        guarded = guarded_update(outcome, gram_index=not self.postgresql)  # before the writer is taken
        written, row = self._answers.finish(outcome, guarded)  # with the others waiting (db/group_commit.py)
        if written and row is None and guarded is not None and known is not None:
            return detached_job(guarded.row(known))
        if row is None:
            raise NoResultFound(f"no job {job_id}")
        job = detached_job(row)
        if not written:
            log.warning(
                "job %d is no longer held by this claim (now %s on %s): this outcome is discarded",
                job_id,
                job.status,
                job.node,
            )
        return job

    def schedule_retry(
        self,
        job_id: int,
        when: datetime,
        error: str,
        error_code: str,
        *,
        claim: tuple[str | None, int] | None = None,
    ) -> None:
        """Put a job back in the queue, due at `when` (only while `claim` still holds it, when given)."""
        with self._write() as session:
            query = update(Job).where(Job.id == job_id)
            if claim is not None:
                query = query.where(
                    Job.status == JobStatus.RUNNING, Job.node == claim[0], Job.attempts == claim[1]
                )
            session.execute(
                query.values(
                    status=JobStatus.QUEUED, next_attempt_at=when, error=error, error_code=error_code
                )
            )
            self._announce_work(session)

    def requeue(self, job_ids: Sequence[int], *, refund_attempt: bool = True, held_by: Any = _ANYONE) -> int:
        """Return claimed jobs to the queue (shutdown, or a worker restart) without counting an attempt.

        With `held_by` (a node name, or None), only jobs that claimer still holds: a re-queue decided from
        an earlier look at the table (a dead node's claims) cannot take a job claimed since by another.
        """
        if not job_ids:
            return 0
        with self._write() as session:
            values: dict[str, Any] = {"status": JobStatus.QUEUED, "started_at": None}
            if refund_attempt:
                values["attempts"] = _one_less(Job.attempts)
            query = update(Job).where(Job.id.in_(list(job_ids)), Job.status == JobStatus.RUNNING)
            if held_by is not _ANYONE:
                query = query.where(Job.node.is_(None) if held_by is None else Job.node == held_by)
            result = session.execute(query.values(**values))
            self._announce_work(session)
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
                    attempts=_one_less(Job.attempts),
                )
            )
            self._announce_work(session)

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
            self._announce_work(session)
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


def _one_less(column: Any) -> Any:
    # max(x - 1, 0) in both dialects (SQLite's two-argument max is PostgreSQL's greatest).
    return case((column > 0, column - 1), else_=0)
