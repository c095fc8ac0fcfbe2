"""Recording what happened to a job: done, failed, retried later, or answered from an earlier job.

Every write goes through `persist`, which waits out a storage fault (disk full, database briefly read-only
or locked) with backoff and tries again, holding the answer in memory meanwhile: an answer the model spent a
minute on is not thrown away because the disk filled for ten seconds. When the service stops during such a
wait the job stays `running` in the database and is re-queued at the next start, so nothing is lost either
way. Listeners (sidecars, feeds, metrics) hear of a job only after it is recorded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from db.models import Job, JobStatus, utcnow
from db.store import Store
from service.backends.base import Backend
from service.config import Config
from service.errors import StorageUnavailable, TransientError
from service.messages import Message, msg
from service.ocr_step import STEP_NOTES, OcrOutcome, merged_notes, step_notes
from service.queue import JobQueue
from service.retry import Backoff
from service.work import Work, join_pages

log = logging.getLogger(f"tuwen.{__name__}")

T = TypeVar("T")

# Columns a reused answer copies from the job it reuses. A staff correction belongs to the content, so a
# renamed scan keeps it.
REUSED_COLUMNS = (
    "answer",
    "answer_kind",
    "finish_reason",
    "reasoning",
    "ocr_text",
    "ocr_lines",
    "needs_review",
    "rotation",
    "backend",
    "model",
    "model_version",
    "width",
    "height",
    "pages",
    "review_status",
    "correction",
    "reviewed_at",
    "reviewed_by",
)


class StopRecording(Exception):
    """The service is stopping while storage is unavailable: leave the job for the next start."""


class Recorder:
    """Writes job outcomes through the store and announces them on the queue."""

    def __init__(self, config: Config, store: Store, queue: JobQueue, stop: threading.Event) -> None:
        self.config = config
        self.store = store
        self.queue = queue
        self.stop = stop
        self.on_recorded: Callable[[Job], None] = lambda job: None  # the worker forgets its claim here

    def persist(self, write: Callable[[], T]) -> T:
        """Run `write()`, waiting out storage faults with backoff; `StopRecording` when stopping meanwhile."""
        backoff = Backoff(base=0.5, cap=30.0)
        while True:
            try:
                return write()
            except StorageUnavailable:
                # Store.health has logged the fault once; keep trying quietly until it clears.
                if backoff.wait(self.stop):
                    raise StopRecording() from None

    def complete(self, work: Work, backend: Backend, ocr: OcrOutcome) -> Job:
        """Record a done job with its answer (pages joined), its OCR reading, notes and usage."""
        job, answers = work.job, work.answers
        reasoning = "\n\n".join(a.reasoning for a in answers if a.reasoning) or None
        first = work.images[0] if work.images else None
        fields = {
            "status": JobStatus.DONE,
            "answer": join_pages([a.text for a in answers]),
            "answer_kind": getattr(backend, "answer_kind", "model"),
            "finish_reason": "length" if any(a.finish_reason == "length" for a in answers) else "stop",
            "reasoning": reasoning,
            **ocr.columns(),
            "notes": merged_notes(job.notes, step_notes(work, ocr)),
            "error": None,
            "error_code": None,
            "error_params": None,
            "backend": backend.name,
            "model": backend.model_id,
            "model_version": backend.model_version,
            "width": first.width if first else None,
            "height": first.height if first else None,
            "pages": sum(len(image.pages) for image in work.images),
            "prompt_tokens": sum(a.prompt_tokens for a in answers),
            "completion_tokens": sum(a.completion_tokens for a in answers),
            "latency_ms": (time.monotonic() - work.started) * 1000,
        }
        claim = _claim_of(job)
        finished = self.persist(lambda: self.store.finish(job.id, claim=claim, claimed=job, **fields))
        if finished.status == JobStatus.DONE:
            log.info("done in %.0f ms", finished.latency_ms or 0)
        self._announce(finished)
        return finished

    def fail(self, job: Job, message: Message, backend: Backend | None) -> Job:
        """Record a failed job with its catalogue message."""
        finished = self.persist(
            lambda: self.store.finish(
                job.id,
                claim=_claim_of(job),
                claimed=job,
                status=JobStatus.FAILED,
                error=str(message),
                error_code=message.code,
                error_params=message.json_params() or None,
                backend=backend.name if backend else None,
                model=backend.model_id if backend else None,
                model_version=backend.model_version if backend else None,
            )
        )
        log.warning("failed: %s", message)
        self._announce(finished)
        return finished

    def retry_or_fail(self, job: Job, exc: TransientError, backend: Backend | None) -> None:
        """Put the job back with exponential backoff, or fail it once `[queue] max_attempts` are spent."""
        attempts = job.attempts  # already counted by claim()
        queue = self.config.queue
        if attempts >= queue.max_attempts:
            self.fail(job, msg("retries_exhausted", attempts=attempts, reason=exc.message.en), backend)
            return
        delay = min(queue.retry_base_seconds * 2 ** (attempts - 1), queue.retry_max_seconds)
        when = utcnow() + timedelta(seconds=delay)
        self.persist(
            lambda: self.store.schedule_retry(job.id, when, str(exc.message), exc.code, claim=_claim_of(job))
        )
        self.on_recorded(job)
        log.warning("attempt %d failed (%s); retry in %.0f s", attempts, exc.code, delay)

    def reuse_previous_answer(self, job: Job, backend: Backend) -> bool:
        """Answer a dedup job from a done job with the same content, prompt and model; False if none."""
        if not job.sha256:
            return False
        previous = self.store.find_answer_for_content(
            job.sha256, job.prompt_hash, backend.model_id, backend.model_version
        )
        if previous is None or previous.id == job.id:
            return False
        copied = {name: getattr(previous, name) for name in REUSED_COLUMNS}
        # The reading's notes (pages dropped, text layer, rotation) come with it; the file's own stay.
        step = [note for note in previous.notes or () if note.get("code") in STEP_NOTES]
        own = [note for note in job.notes or () if note.get("code") not in STEP_NOTES]
        copied["notes"] = own + step or None
        finished = self.persist(
            lambda: self.store.finish(
                job.id,
                claim=_claim_of(job),
                claimed=job,
                status=JobStatus.DONE,
                duplicate_of=previous.id,
                prompt_tokens=0,
                completion_tokens=0,
                latency_ms=0.0,
                **copied,
            )
        )
        log.info("same content as job %s: answer reused", previous.uid[:8])
        self._announce(finished)
        return True

    def _announce(self, finished: Job) -> None:
        self.on_recorded(finished)
        if finished.status in (JobStatus.DONE, JobStatus.FAILED):  # not when another node holds it now
            self.queue.finished(finished)


def _claim_of(job: Job) -> tuple[str | None, int] | None:
    # The claim a worker holds (node, attempts): the store writes its outcome only while it still holds.
    return (job.node, job.attempts) if job.status == JobStatus.RUNNING else None
