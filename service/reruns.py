"""Re-running finished jobs: a new job for the same input, the old row kept as history.

- A folder job is asked again with its watch's *current* prompt (that is usually why it is re-run) and
  queued as backlog, so a paused backlog holds it; any other job is asked its own question again at
  `Priority.CLI` (nobody waits on it, but it is not a folder's backlog either).
- The model is always asked again (no reuse of an earlier answer for the same content: that is what a
  re-run is for).
- What a person wrote is theirs: a correction on the old job is copied onto the new one (`review_status`
  corrected), so the sidecars written when the new answer arrives show the correction, with the model's new
  answer beside it. A plain "correct" verdict judged the old answer, so it is not carried over.
- A folder file's record is pointed at the new job, so its sidecars and "re-run the failed ones" follow it.
  Only the newest job for a file may be re-run: an older one would put a stale answer back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from db import ops
from db.models import Job, JobStatus
from service.config import Config, WatchConfig
from service.events import ChatTurn, Event, GenerationOptions, Priority, Source
from service.messages import Message, msg
from service.queue import JobQueue
from service.sidecars.output import sidecar_paths_for

WHICH = ("missing", "failed", "all")
FINISHED = (JobStatus.DONE, JobStatus.FAILED)


class RerunRefused(Exception):
    """A re-run that cannot be done; `status` is the HTTP status that fits, `message` says why."""

    def __init__(self, status: int, message: Message) -> None:
        super().__init__(message.en)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class WatchRerun:
    """What a watch re-run queued."""

    watch: str
    which: str
    queued: list[int]
    skipped: int


class Reruns:
    """Queue re-runs of single jobs and of a watch's files."""

    def __init__(self, config: Config, queue: JobQueue) -> None:
        self.config = config
        self.queue = queue
        self.store = queue.store
        self._watch_lock = threading.Lock()

    def watch_of(self, job: Job) -> WatchConfig | None:
        """The configured watch a folder job came from (None for other jobs or a watch since removed)."""
        if job.source != Source.WATCH:
            return None
        return next((w for w in self.config.watch if w.key == job.source_ref), None)

    def rerun_job(self, job: Job) -> Job:
        """Queue `job` again; returns the new job. `RerunRefused` when it is not finished, its images are
        gone or a newer job answers its file."""
        if job.status not in FINISHED:
            raise RerunRefused(409, msg("job_not_finished", job=job.id, status=job.status))
        images = tuple(self._image_path(stored) for stored in job.images or ())
        missing = next((path for path in images if not Path(path).is_file()), None)
        if not images or missing is not None:
            raise RerunRefused(410, msg("job_images_gone", job=job.id, path=missing or "-"))
        if job.source == Source.WATCH and job.file_path:
            latest = self.queue.latest_finished_job_for_file(job.source, job.source_ref, job.file_path)
            newer = max(
                latest.id if latest else 0, ops.file_job(self.store, job.source_ref, job.file_path) or 0
            )
            if newer > job.id:  # answered again since, or a re-run of it is queued already
                raise RerunRefused(409, msg("job_newer_answer", file=job.file_path, newer=newer))
        return self._queue_again(job, images)

    def _queue_again(self, job: Job, images: tuple[str, ...]) -> Job:
        watch = self.watch_of(job)
        options = GenerationOptions.from_dict(job.options)
        if watch is not None:
            question, priority = watch.prompt, Priority.BACKLOG
            options = GenerationOptions(thinking=watch.thinking)
        elif job.source in (Source.WATCH, Source.BATCH):
            question, priority = job.question, Priority.BACKLOG
        else:
            question, priority = job.question, Priority.CLI
        notes: list[dict[str, object]] = [_note(msg("note_rerun_of", job=job.id))]
        carried = job.review_status == "corrected" and bool(job.correction)
        if carried:
            notes.append(_note(msg("note_correction_kept", job=job.id)))
        event = Event(
            source=job.source,
            source_ref=job.source_ref,
            question=question,
            images=images,
            priority=priority,
            history=tuple(ChatTurn(str(t.get("role")), str(t.get("text"))) for t in job.history or ()),
            sha256=job.sha256,
            file_size=job.file_size,
            file_mtime=job.file_mtime,
            notes=tuple(notes),
            options=options,
        )
        fresh = self.queue.submit(event, dedup=False)
        if carried:
            updated = ops.carry_correction(self.store, fresh.id, job)
            if updated is not None and updated.status in FINISHED:
                self.queue.updated(
                    updated
                )  # answered already: its sidecars are rewritten with the correction
        if job.source == Source.WATCH and job.file_path:
            ops.point_file_to(self.store, job.source_ref, job.file_path, fresh.id)
        return self.store.get(fresh.id) or fresh

    def rerun_watch(self, name: str, which: str) -> WatchRerun:
        """Queue again the files of watch `name`: "failed" (their job failed), "missing" (their JSON sidecar
        is not on disk) or "all" (every finished one). Files whose job is still queued or running are
        skipped."""
        watch = next((w for w in self.config.watch if name in (w.key, w.name)), None)
        if watch is None:
            raise RerunRefused(404, msg("watch_unknown", name=name))
        if not self._watch_lock.acquire(blocking=False):
            raise RerunRefused(409, msg("watch_rerun_busy", name=name))
        try:
            return self._rerun_files(watch, which)
        finally:
            self._watch_lock.release()

    def _rerun_files(self, watch: WatchConfig, which: str) -> WatchRerun:
        files = ops.watch_files(self.store, watch.key)
        jobs = ops.jobs_by_id(self.store, [job_id for _, job_id in files if job_id is not None])
        queued: list[int] = []
        skipped = 0
        for job in _chosen(watch, which, (jobs.get(job_id) for _, job_id in files if job_id is not None)):
            try:
                queued.append(self.rerun_job(job).id)
            except RerunRefused:
                skipped += 1  # the scan is gone, or a newer answer exists: nothing to do for it
        return WatchRerun(watch.key, which, queued, skipped)

    def _image_path(self, stored: str) -> str:
        path = Path(stored)
        return stored if path.is_absolute() else str(self.config.storage.data_dir / path)


def _chosen(watch: WatchConfig, which: str, jobs: Iterable[Job | None]) -> Iterable[Job]:
    for job in jobs:
        if job is None or job.status not in FINISHED:
            continue
        if which == "failed" and job.status != JobStatus.FAILED:
            continue
        if which == "missing" and not _sidecar_missing(job, watch):
            continue
        yield job


def _sidecar_missing(job: Job, watch: WatchConfig) -> bool:
    if not job.images:
        return False
    try:
        json_path, _ = sidecar_paths_for(Path(job.images[0]), watch)
    except ValueError:
        return False
    return not json_path.is_file()


def _note(message: Message) -> dict[str, object]:
    return {"code": message.code, "params": message.json_params()}
