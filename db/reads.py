"""The job history's read queries, beside the single writer (`db.store.Store` inherits them).

Readers never take the write lock: WAL lets them read while a write is in progress.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, func, or_, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from db.models import Job, JobStatus

MAX_ROW_ID = 2**63 - 1
# A done job with this content, prompt and model; a staff-reviewed answer is the better one to reuse,
# otherwise the newest.
_SAME_CONTENT = (
    select(Job.id)
    .where(
        Job.sha256 == bindparam("sha"),
        Job.prompt_hash == bindparam("prompt"),
        Job.model == bindparam("model"),
        Job.model_version == bindparam("version"),
        Job.status == JobStatus.DONE,
    )
    .order_by((Job.review_status == "unreviewed").asc(), Job.id.desc())
    .limit(1)
)


class JobReads:
    """Reads of `jobs`; the class using it provides `_read()` sessions and the `engine`."""

    engine: Engine

    def _read(self) -> Session:
        raise NotImplementedError

    def get(self, job_id: int) -> Job | None:
        """One job by id (None for ids no row can have: SQLite integers are 64-bit)."""
        if not 0 < job_id <= MAX_ROW_ID:
            return None
        with self._read() as session:
            return session.get(Job, job_id)

    def get_by_uid(self, uid: str) -> Job | None:
        """One job by its public uid."""
        with self._read() as session:
            return session.scalars(select(Job).where(Job.uid == uid)).first()

    def jobs_by_uids(self, uids: Sequence[str]) -> list[Job]:
        """Several jobs by uid, in id order."""
        with self._read() as session:
            return list(session.scalars(select(Job).where(Job.uid.in_(list(uids))).order_by(Job.id)))

    def find_answer_for_content(
        self, sha256: str, prompt_hash: str, model: str, model_version: str
    ) -> Job | None:
        """A done job for the same content, prompt and model: its answer can be reused.

        Asked for every folder job before its model call, and nearly always in vain: the id is looked up
        with one prebuilt Core statement, and only a hit loads the row.
        """
        params = {"sha": sha256, "prompt": prompt_hash, "model": model, "version": model_version}
        with self._read() as session:
            found = session.connection().execute(_SAME_CONTENT, params).scalar()
            return session.get(Job, found) if found is not None else None

    def latest_job_for_file(self, file_path: str, size: int, mtime: float, prompt_hash: str) -> Job | None:
        """The newest job for this exact file state and prompt (a resumed `tuwen batch`)."""
        with self._read() as session:
            return session.scalars(
                select(Job)
                .where(
                    Job.file_path == file_path,
                    Job.file_size == size,
                    Job.file_mtime == mtime,
                    Job.prompt_hash == prompt_hash,
                )
                .order_by(Job.id.desc())
                .limit(1)
            ).first()

    def latest_finished_job_for_file(self, source: str, source_ref: str, file_path: str) -> Job | None:
        """The newest done or failed job of one source instance for a file (the one its sidecars show)."""
        with self._read() as session:
            return session.scalars(
                select(Job)
                .where(
                    Job.source == source,
                    Job.source_ref == source_ref,
                    Job.file_path == file_path,
                    Job.status.in_([JobStatus.DONE, JobStatus.FAILED]),
                )
                .order_by(Job.id.desc())
                .limit(1)
            ).first()

    def finished_elsewhere(self, source: str, source_ref: str, since: datetime, node: str) -> list[Job]:
        """Done or failed jobs of one source instance that another node finished at `since` or later."""
        with self._read() as session:
            return list(
                session.scalars(
                    select(Job)
                    .where(
                        Job.source == source,
                        Job.source_ref == source_ref,
                        Job.finished_at >= since,
                        Job.status.in_([JobStatus.DONE, JobStatus.FAILED]),
                        or_(Job.node.is_(None), Job.node != node),
                    )
                    .order_by(Job.finished_at, Job.id)
                    .limit(1000)
                )
            )

    def uncatalogued_jobs(self, source: str, source_ref: str, limit: int = 10_000) -> list[Job]:
        """Finished jobs of one source instance whose catalogue row was never written, oldest first."""
        with self._read() as session:
            return list(
                session.scalars(
                    select(Job)
                    .where(
                        Job.source == source,
                        Job.source_ref == source_ref,
                        Job.status.in_([JobStatus.DONE, JobStatus.FAILED]),
                        Job.catalogued == 0,
                        Job.file_path.is_not(None),
                    )
                    .order_by(Job.id)
                    .limit(limit)
                )
            )

    def list_jobs(self, status: str | None = None, limit: int = 50, source: str | None = None) -> list[Job]:
        """Newest jobs first, optionally filtered."""
        with self._read() as session:
            query = select(Job).order_by(Job.id.desc()).limit(limit)
            if status:
                query = query.where(Job.status == status)
            if source:
                query = query.where(Job.source == source)
            return list(session.scalars(query))

    def queue_depth(self) -> dict[int, int]:
        """Queued jobs per priority."""
        with self._read() as session:
            rows = session.execute(
                select(Job.priority, func.count())
                .where(Job.status == JobStatus.QUEUED)
                .group_by(Job.priority)
            ).all()
            return {int(priority): int(count) for priority, count in rows}

    def status_counts(self) -> dict[str, int]:
        """Jobs per status."""
        with self._read() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            return {str(status): int(count) for status, count in rows}

    def next_due_time(self) -> datetime | None:
        """When the earliest deferred retry becomes due (so the worker can sleep until then)."""
        with self._read() as session:
            return session.scalar(select(func.min(Job.next_attempt_at)).where(Job.status == JobStatus.QUEUED))

    def integrity_check(self) -> str:
        """SQLite's own integrity check ('ok' when healthy)."""
        with self.engine.connect() as conn:
            return str(conn.execute(text("PRAGMA integrity_check")).scalar())
