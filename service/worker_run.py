"""One life of the model worker's thread: load the backend, then claim, answer and record until stopped.

`ModelWorker` (service/worker.py) supervises these: it starts one, restarts it after a crash, and replaces it
when a job in hand outlives `[model] job_timeout_seconds`. A run that has been replaced may still be inside
the backend; whatever it brings back afterwards is discarded (`current()`), because its jobs were given to
the new run. Decoding is `service.work`, recording `service.recorder`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from db.models import Job, utcnow
from service.backends.base import Answer, Backend
from service.dispatch import Dispatcher
from service.errors import OutOfMemoryError, PermanentError, StorageUnavailable, TransientError, TuwenError
from service.events import Priority
from service.logs import job_context
from service.messages import msg
from service.ocr_step import OcrOutcome, from_answers, read_beside
from service.recorder import Recorder, StopRecording
from service.retry import Backoff
from service.supervisor import Supervisor
from service.work import Work, prepare

if TYPE_CHECKING:
    from service.worker import ModelWorker

log = logging.getLogger(f"tuwen.{__name__}")

IDLE_SECONDS = 5.0
CROSS_PROCESS_POLL_SECONDS = 0.25


class WorkerRun:
    """The backend, the claims and the jobs in hand of one worker thread."""

    def __init__(self, owner: ModelWorker, generation: int) -> None:
        self.owner = owner
        self.generation = generation
        self.recorder = Recorder(owner.config, owner.store, owner.queue, owner.stopping)
        self.recorder.on_recorded = lambda job: self.claimed.discard(job.id)
        self.supervisor: Supervisor | None = None
        self.backend: Backend | None = None
        self.claimed: set[int] = set()
        # Jobs inside the backend now, with when each went in (several at once with a concurrent remote).
        self._holding: dict[int, tuple[Job, float]] = {}
        self._holding_lock = threading.Lock()

    def current(self) -> bool:
        """False once the watchdog has handed this run's jobs to a fresh run (they timed out)."""
        return self.owner.current_run is self

    @property
    def in_hand(self) -> list[Job]:
        """The jobs inside the backend now."""
        with self._holding_lock:
            return [job for job, _ in self._holding.values()]

    @property
    def in_hand_since(self) -> float | None:
        """When the longest-held job in hand went into the backend (None when nothing is in hand)."""
        with self._holding_lock:
            return min((since for _, since in self._holding.values()), default=None)

    def held_longer_than(self, seconds: float) -> list[Job]:
        """The jobs in hand for more than `seconds` (the watchdog's stuck jobs)."""
        now = time.monotonic()
        with self._holding_lock:
            return [job for job, since in self._holding.values() if now - since > seconds]

    def hold(self, jobs: list[Job]) -> None:
        """These jobs go into the backend now."""
        now = time.monotonic()
        with self._holding_lock:
            self._holding.update((job.id, (job, now)) for job in jobs)

    def let_go(self, jobs: list[Job]) -> None:
        """These jobs are out of the backend (answered, failed or abandoned)."""
        with self._holding_lock:
            for job in jobs:
                self._holding.pop(job.id, None)

    # -- the thread's loop -------------------------------------------------------------------------

    def serve(self, stop: threading.Event) -> None:
        """The supervisor's target: load, then answer until `stop`."""
        if not self.load_backend(stop):
            return
        concurrency = int(getattr(self.backend, "concurrency", 1) or 1)
        try:
            if concurrency > 1:
                Dispatcher(self, concurrency).serve(stop)
                return
            while not stop.is_set():
                try:
                    jobs = self.claim()
                except StorageUnavailable:
                    stop.wait(2.0)  # Store.health logged it; claims resume once the disk is writable
                    continue
                if not jobs:
                    self.idle(stop)
                    continue
                self.process(jobs)
        except StopRecording:
            log.info("stopping while the database is unavailable; the job in hand is re-queued at next start")
        finally:
            self.release()

    def load_backend(self, stop: threading.Event) -> bool:
        """Load the backend, retrying transient failures with backoff. False when stopping or hopeless."""
        owner = self.owner
        backoff = Backoff(base=2.0, cap=60.0)
        warned = False
        while not stop.is_set():
            owner.state = "loading"
            backend = owner.backend_factory(owner.config)
            started = time.monotonic()
            try:
                backend.load()
            except TransientError as exc:
                if not warned:
                    log.warning("model unavailable, will keep trying: %s", exc.message)
                    warned = True
                owner.error = exc.message
                backoff.wait(stop)
                continue
            except TuwenError as exc:
                owner.state, owner.error = "failed", exc.message
                log.error("%s", exc.message)
                return False
            if warned:
                log.info("model available again")
            if stop.is_set() or not self.current():  # abandoned while loading
                close_backend(backend)
                return False
            self.backend = backend
            owner.ready(backend)
            log.info(
                "model ready: backend=%s model=%s version=%s (%.1f s)",
                backend.name,
                backend.model_id,
                backend.model_version,
                time.monotonic() - started,
            )
            return True
        return False

    def release(self) -> None:
        """Give the claims back to the queue and drop the backend (a crash, a stop, an abandoned run)."""
        if self.claimed:
            try:
                self.owner.store.requeue(sorted(self.claimed))
            except StorageUnavailable:
                log.warning("could not re-queue %d job(s) now; re-queued at next start", len(self.claimed))
            self.claimed.clear()
        backend, self.backend = self.backend, None
        if backend is not None:
            close_backend(backend)
        with self._holding_lock:
            self._holding.clear()

    def idle(self, stop: threading.Event) -> None:
        """Wait for work: a `notify()` here, a commit from another process, or a retry falling due."""
        store, queue = self.owner.store, self.owner.queue
        deadline = time.monotonic() + self._idle_timeout()
        version = store.data_version()
        while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
            if queue.wait_for_work(min(remaining, CROSS_PROCESS_POLL_SECONDS)):
                return
            if store.data_version() != version:
                return  # another process (`tuwen ask` beside us, another node) wrote to the queue

    def _idle_timeout(self) -> float:
        if self.owner.backlog.paused():
            return IDLE_SECONDS  # due backlog jobs wait; a question wakes the worker through the queue
        due = self.owner.store.next_due_time()
        if due is None:
            return IDLE_SECONDS
        return max(0.05, min((due - utcnow()).total_seconds(), IDLE_SECONDS))

    # -- one round -------------------------------------------------------------------------------

    def claim(self, limit: int | None = None, priorities: tuple[int, int] | None = None) -> list[Job]:
        """Up to a batch (or `limit`) of due jobs, in a range of priorities if given, now ours.

        While the backlog is paused (`service/backlog.py`) the range leaves out backlog priorities; a
        one-shot run (`only_uids`: the jobs of the `tuwen batch` someone just started alone) is not held.
        """
        owner = self.owner
        only = owner.only_uids
        if only is None:
            claim_any, priorities = owner.backlog.claim_range(priorities)
            if not claim_any:
                return []
        jobs = owner.store.claim(
            limit or owner.batch_size,
            uids=sorted(only) if only is not None else None,
            node=owner.node,
            priorities=priorities,
        )
        self.claimed.update(job.id for job in jobs)
        return jobs

    def process(self, jobs: list[Job], answered: Callable[[], None] | None = None) -> None:
        """Reuse earlier answers, decode the rest, answer them together and record each.

        `answered` is called once the backend is done with them: before an answer is recorded, after a
        failure is (the recorder's retry or failure write comes first). Not at all when none reached the
        backend (every answer reused or every file refused): the caller frees its slot itself then.
        """
        backend = self.backend
        assert backend is not None
        works: list[Work] = []
        for job in jobs:
            with job_context(job.uid):
                try:
                    if job.dedup and self.recorder.reuse_previous_answer(job, backend):
                        continue
                    works.append(prepare(job, self.owner.config))
                except PermanentError as exc:
                    self.recorder.fail(job, exc.message, backend)
                except (StopRecording, StorageUnavailable):
                    raise
                except Exception as exc:  # a decoder bug on a hostile file must not take the worker down
                    log.exception("unexpected error while preparing images")
                    self.recorder.fail(job, msg("unexpected", reason=f"{type(exc).__name__}: {exc}"), backend)
        if works:
            with job_context(*(w.job.uid for w in works)):
                self._answer_and_record(backend, works, answered)

    def _answer_and_record(
        self, backend: Backend, works: list[Work], answered: Callable[[], None] | None = None
    ) -> None:
        recorder = self.recorder
        interactive = len(works) == 1 and works[0].job.priority <= Priority.INTERACTIVE
        self.hold([w.job for w in works])
        try:
            if interactive and len(works[0].requests) == 1:
                self._answer_streaming(backend, works[0])
            else:
                self._answer_batched(backend, works)
        except OutOfMemoryError as exc:
            if self.current():
                self.owner.batch_size = max(1, self.owner.batch_size // 2)
                log.warning("out of memory; batch size now %d", self.owner.batch_size)
                for work in works:
                    recorder.retry_or_fail(work.job, exc, backend)
            return
        except TransientError as exc:
            if self.current():
                for work in works:
                    recorder.retry_or_fail(work.job, exc, backend)
            return
        except TuwenError as exc:  # a permanent failure
            if self.current():
                if len(works) > 1:  # answer one by one so one bad job cannot fail the rest
                    for work in works:
                        self._answer_alone(backend, work)
                else:
                    recorder.fail(works[0].job, exc.message, backend)
            return
        except Exception as exc:
            if not self.current():
                return
            # Not a failure the backend understood: record it on the jobs (a poison job must not crash the
            # worker forever), then let the supervisor restart the backend in case its state is broken.
            for work in works:
                recorder.fail(work.job, msg("unexpected", reason=f"{type(exc).__name__}: {exc}"), backend)
            raise
        finally:
            self.let_go([w.job for w in works])
            if answered is not None:
                answered()
        if not self.current():
            log.warning("an answer arrived after its job timed out; discarded")
            return
        for work in works:
            with job_context(work.job.uid):
                recorder.complete(work, backend, self._ocr_outcome(backend, work))
                self.owner.jobs_done += 1

    def _answer_alone(self, backend: Backend, work: Work) -> None:
        try:
            self._answer_batched(backend, [work])
        except TransientError as exc:
            self.recorder.retry_or_fail(work.job, exc, backend)
        except TuwenError as exc:
            self.recorder.fail(work.job, exc.message, backend)
        else:
            self.recorder.complete(work, backend, self._ocr_outcome(backend, work))
            self.owner.jobs_done += 1

    def _answer_streaming(self, backend: Backend, work: Work) -> None:
        listener = self.owner.queue.text_listener(work.job.uid)
        request = work.requests[0]
        work.answers = [backend.stream(request, listener) if listener else backend.answer(request)]

    def _answer_batched(self, backend: Backend, works: list[Work]) -> None:
        requests = [request for work in works for request in work.requests]
        size = self.owner.batch_size
        answers: list[Answer] = []
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            answers.extend(backend.batch(chunk) if len(chunk) > 1 else [backend.answer(chunk[0])])
        for work in works:
            work.answers, answers = answers[: len(work.requests)], answers[len(work.requests) :]

    def _ocr_outcome(self, backend: Backend, work: Work) -> OcrOutcome:
        if backend.name == "ocr":
            return from_answers(work)
        if not self.owner.config.model.ocr_step:
            return OcrOutcome()
        return read_beside(self.owner.ocr_engine(), work, self.owner.config.ocr.review_confidence)


def close_backend(backend: Backend) -> None:
    """Close a backend, logging (never raising) what goes wrong."""
    try:
        backend.close()
    except Exception:
        log.exception("closing the backend failed")
