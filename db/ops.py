"""What the operations routes (re-runs, the watches' progress) read and write, through the store's writer.

- `carry_correction`: a re-run's new row takes the correction a person wrote on the old one, so the model's
  new answer lands beside it and never replaces it (the old row keeps its own review as history).
- `point_file_to`: a watched file's record names the job its sidecars now show (the re-run), so a second
  "re-run the failed ones" does not queue the same file again.
- `watch_progress`: per watch, how many jobs are queued, running, done and failed, and how many were done in
  the last hour (the throughput the time-left estimate uses).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from db.models import FileState, Job, JobStatus, ReviewStatus, WatchedFile, utcnow
from db.store import Store

WATCH_SOURCE = "watch"
STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.DONE, JobStatus.FAILED)


def carry_correction(store: Store, new_job_id: int, old: Job) -> Job | None:
    """Copy `old`'s correction (and who wrote it, when) onto the job `new_job_id`; returns the updated job,
    or None when `old` has no correction."""
    if old.review_status != ReviewStatus.CORRECTED or not old.correction:
        return None
    with store.write_session() as session:
        job = session.get_one(Job, new_job_id)
        # On the loaded object, so the flush hooks refold the searched text with the correction in it.
        job.review_status, job.correction = ReviewStatus.CORRECTED, old.correction
        job.reviewed_at, job.reviewed_by = old.reviewed_at, old.reviewed_by
        session.flush()
        return job


def point_file_to(store: Store, source_ref: str, file_path: str, job_id: int) -> None:
    """Record that the watched file shown as `file_path` is now answered by `job_id`."""
    with store.write_session() as session:
        session.execute(
            update(WatchedFile)
            .where(
                WatchedFile.source == WATCH_SOURCE,
                WatchedFile.source_ref == source_ref,
                WatchedFile.display_path == file_path,
            )
            .values(job_id=job_id, updated_at=utcnow())
        )


def file_job(store: Store, source_ref: str, file_path: str) -> int | None:
    """The job the record of the watched file shown as `file_path` names (None when there is none)."""
    with store.read_session() as session:
        return session.scalar(
            select(WatchedFile.job_id).where(
                WatchedFile.source == WATCH_SOURCE,
                WatchedFile.source_ref == source_ref,
                WatchedFile.display_path == file_path,
            )
        )


def watch_files(store: Store, source_ref: str) -> list[tuple[str, int | None]]:
    """Every present file of one watch: (path as shown, the job its record names)."""
    with store.read_session() as session:
        rows = session.execute(
            select(WatchedFile.display_path, WatchedFile.job_id)
            .where(WatchedFile.source == WATCH_SOURCE, WatchedFile.source_ref == source_ref)
            .where(WatchedFile.state == FileState.PRESENT)
            .order_by(WatchedFile.id)
        )
        return [(str(path), job_id) for path, job_id in rows]


def jobs_by_id(store: Store, ids: list[int]) -> dict[int, Job]:
    """The jobs with these ids (read in chunks: SQLite limits a statement's parameters)."""
    found: dict[int, Job] = {}
    with store.read_session() as session:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            found.update((job.id, job) for job in session.scalars(select(Job).where(Job.id.in_(chunk))))
    return found


def watch_progress(store: Store) -> dict[str, dict[str, Any]]:
    """Per watch key: counts by status and `done_last_hour`."""
    since = utcnow() - timedelta(hours=1)
    progress: dict[str, dict[str, Any]] = {}
    with store.read_session() as session:
        counts = session.execute(
            select(Job.source_ref, Job.status, func.count(Job.id))
            .where(Job.source == WATCH_SOURCE)
            .group_by(Job.source_ref, Job.status)
        )
        for ref, status, count in counts:
            entry = progress.setdefault(str(ref), watch_progress_empty())
            if status in STATUSES:
                entry[status] = int(count)
        recent = session.execute(
            select(Job.source_ref, func.count(Job.id))
            .where(Job.source == WATCH_SOURCE, Job.status == JobStatus.DONE, Job.finished_at >= since)
            .group_by(Job.source_ref)
        )
        for ref, count in recent:
            progress.setdefault(str(ref), watch_progress_empty())["done_last_hour"] = int(count)
    return progress


def watch_progress_empty() -> dict[str, Any]:
    """The progress of a watch with no jobs yet."""
    return {**dict.fromkeys(STATUSES, 0), "done_last_hour": 0}
