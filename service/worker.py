"""The model worker: the one thread that owns the backend (and so the GPU).

It claims jobs from the persistent queue, decodes their images (`service.work`), asks the backend, and has
the `Recorder` write the result. Two watchdogs keep it honest, as Frigate's detector watchdog does:

- a crash (an exception the backend did not understand) restarts the worker thread through a `Supervisor`,
  at most `MAX_RESTARTS_PER_MINUTE` times a minute; after that it stays down and `/health` says so;
- a job in hand longer than `[model] job_timeout_seconds` (a generation that never ends, a server that
  accepts and never answers) makes `/health` answer 503 naming the job; the stuck thread is abandoned
  (the backend is asked to `cancel()` if it can), a fresh backend is loaded on a new thread, and the job is
  retried once, then failed with a clear message. A late answer from the abandoned thread is discarded.

Jobs it had claimed go back to the queue on a crash or stop, so nothing is lost. Storage faults (disk full,
database read-only) while claiming or recording are waited out with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from db.models import Job, utcnow
from db.store import Store
from service.backends.base import Answer, Backend
from service.config import Config
from service.errors import (
    OutOfMemoryError,
    PermanentError,
    StorageUnavailable,
    TransientError,
    TuwenError,
)
from service.events import Priority
from service.logs import job_context
from service.messages import Message, msg
from service.queue import JobQueue
from service.recorder import Recorder, StopRecording
from service.retry import Backoff
from service.supervisor import ComponentStatus, Supervisor
from service.work import Work, join_pages, prepare

log = logging.getLogger("tuwen.service.worker")

MAX_RESTARTS_PER_MINUTE = 3
IDLE_POLL_SECONDS = 1.0
CROSS_PROCESS_POLL_SECONDS = 0.25
WATCHDOG_TICK_SECONDS = 0.25
# How long a timed-out thread gets to let go of the backend before the fresh one loads regardless.
ABANDON_GRACE_SECONDS = 10.0

BackendFactory = Callable[[Config], Backend]


@dataclass
class _Run:
    """One life of the worker thread: its backend, its claims, and what it has in hand."""

    generation: int
    recorder: Recorder
    supervisor: Supervisor | None = None
    backend: Backend | None = None
    claimed: set[int] = field(default_factory=set)
    in_hand: list[Job] = field(default_factory=list)
    in_hand_since: float | None = None


class ModelWorker:
    """Owns the backend; runs in its own thread; supervised and watched for stuck jobs."""

    def __init__(
        self,
        config: Config,
        store: Store,
        queue: JobQueue,
        backend_factory: BackendFactory,
        *,
        only_uids: set[str] | None = None,
        node: str | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.queue = queue
        self.node = node
        self._backend_factory = backend_factory
        self._only_uids = only_uids  # a one-shot CLI run answers only its own jobs
        self.state = "starting"  # starting | loading | ready | stuck | failed | dead | stopped
        self.error: Message | None = None
        self.stuck_jobs: list[str] = []  # uids of the jobs that outlived job_timeout_seconds last
        self.batch_size = config.model.batch_size
        self.jobs_done = 0
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._run = self._new_run(0)
        self._watchdog: threading.Thread | None = None
        self._ocr_engine: object | None = None
        queue.worker_available = self.available

    def _new_run(self, generation: int) -> _Run:
        run = _Run(generation=generation, recorder=Recorder(self.config, self.store, self.queue, self._stop))
        run.recorder.on_recorded = lambda job: run.claimed.discard(job.id)
        return run

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def backend(self) -> Backend | None:
        """The backend of the current worker thread (None while loading or after a crash)."""
        return self._run.backend

    def answer_only(self, uids: set[str]) -> None:
        """Restrict this worker to these jobs (a one-shot CLI run with no service beside it)."""
        self._only_uids = set(uids) | (self._only_uids or set())
        self.queue.notify()

    def start(self) -> None:
        """Start the worker thread (it loads the model, so start-up never blocks on it) and its watchdog."""
        self._start_run(self._run)
        self._watchdog = threading.Thread(target=self._watch, name="tuwen-worker-watchdog", daemon=True)
        self._watchdog.start()

    def _start_run(self, run: _Run) -> None:
        run.supervisor = Supervisor(
            "model-worker",
            lambda stop: self._serve(run, stop),
            backoff=Backoff(base=2.0, cap=30.0),
            max_restarts=MAX_RESTARTS_PER_MINUTE,
            on_crash=lambda exc: self._after_crash(run, exc),
            on_give_up=lambda exc: self._give_up(run, exc),
        )
        run.supervisor.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; finish the one in hand within `timeout`, else leave it to be re-queued."""
        self._stop.set()
        self.queue.notify()
        run = self._run
        if run.supervisor is not None:
            run.supervisor.stop_event.set()
            if not run.supervisor.stop(timeout):
                count = self.store.requeue(sorted(run.claimed))
                log.warning("model worker still busy after %.0f s; re-queued %d job(s)", timeout, count)
        if self._watchdog is not None:
            self._watchdog.join(2)
        self.state = "stopped"

    @property
    def alive(self) -> bool:
        """Whether the worker can answer (model loaded and thread running)."""
        supervisor = self._run.supervisor
        return self.state == "ready" and supervisor is not None and supervisor.alive

    def available(self) -> bool:
        """Whether queued jobs can still be answered: running, loading, or restarting after a stuck job."""
        supervisor = self._run.supervisor
        thread_ok = supervisor is None or supervisor.alive
        return self.state in ("starting", "loading", "ready", "stuck") and thread_ok

    def wait_ready(self, timeout: float) -> bool:
        """Block until the model is loaded (True) or failed/timeout (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state == "ready":
                return True
            if self.state in ("failed", "dead", "stopped"):
                return False
            time.sleep(0.05)
        return False

    def status(self) -> ComponentStatus:
        """The worker's state in the shape `/health` lists for every component."""
        error = str(self.error) if self.error is not None else None
        state = {"ready": "running", "loading": "starting", "dead": "failed"}.get(self.state, self.state)
        return ComponentStatus("model-worker", "worker", state, self.restarts, error)

    # -- the worker thread -----------------------------------------------------------------------

    def _serve(self, run: _Run, stop: threading.Event) -> None:
        if not self._load_backend(run, stop):
            return
        try:
            while not stop.is_set():
                try:
                    jobs = self._claim(run)
                except StorageUnavailable:
                    stop.wait(2.0)  # Store.health logged it; claims resume once the disk is writable
                    continue
                if not jobs:
                    self._idle(stop)
                    continue
                self._process(run, jobs)
        except StopRecording:
            log.info("stopping while the database is unavailable; the job in hand is re-queued at next start")
        finally:
            self._release(run)

    def _load_backend(self, run: _Run, stop: threading.Event) -> bool:
        """Load the backend, retrying transient failures with backoff. False when stopping or hopeless."""
        backoff = Backoff(base=2.0, cap=60.0)
        warned = False
        while not stop.is_set():
            self.state = "loading"
            backend = self._backend_factory(self.config)
            started = time.monotonic()
            try:
                backend.load()
            except TransientError as exc:
                if not warned:
                    log.warning("model unavailable, will keep trying: %s", exc.message)
                    warned = True
                self.error = exc.message
                backoff.wait(stop)
                continue
            except TuwenError as exc:
                self.state, self.error = "failed", exc.message
                log.error("%s", exc.message)
                return False
            if warned:
                log.info("model available again")
            if stop.is_set() or run is not self._run:  # abandoned while loading
                _close(backend)
                return False
            run.backend, self.state, self.error, self.stuck_jobs = backend, "ready", None, []
            self.queue.model_identity = (backend.model_id, backend.model_version)
            log.info(
                "model ready: backend=%s model=%s version=%s (%.1f s)",
                backend.name,
                backend.model_id,
                backend.model_version,
                time.monotonic() - started,
            )
            return True
        return False

    def _after_crash(self, run: _Run, exc: BaseException) -> None:
        """The supervisor's clean-up after a crash: give the claims back and drop the backend."""
        self._release(run)
        self.restarts += 1
        self.error = msg("unexpected", reason=f"{type(exc).__name__}: {exc}")

    def _give_up(self, run: _Run, exc: BaseException) -> None:
        if run is self._run:
            self.state = "dead"
            log.error("model worker crashed %d times in a minute; giving up", MAX_RESTARTS_PER_MINUTE + 1)

    def _release(self, run: _Run) -> None:
        if run.claimed:
            try:
                self.store.requeue(sorted(run.claimed))
            except StorageUnavailable:
                log.warning(
                    "could not re-queue %d job(s) now; they are re-queued at next start", len(run.claimed)
                )
            run.claimed.clear()
        backend, run.backend = run.backend, None
        if backend is not None:
            _close(backend)
        run.in_hand, run.in_hand_since = [], None

    def _idle(self, stop: threading.Event) -> None:
        """Wait for work: a `notify()` here, a commit from another process, or a retry falling due."""
        deadline = time.monotonic() + self._idle_timeout()
        version = self.store.data_version()
        while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
            if self.queue.wait_for_work(min(remaining, CROSS_PROCESS_POLL_SECONDS)):
                return
            if self.store.data_version() != version:
                return  # another process (`tuwen ask` beside us, another node) wrote to the queue

    def _idle_timeout(self) -> float:
        due = self.store.next_due_time()
        if due is None:
            return IDLE_POLL_SECONDS * 5
        return max(0.05, min((due - utcnow()).total_seconds(), IDLE_POLL_SECONDS * 5))

    # -- one round -------------------------------------------------------------------------------

    def _claim(self, run: _Run) -> list[Job]:
        uids = sorted(self._only_uids) if self._only_uids is not None else None
        jobs = self.store.claim(self.batch_size, uids=uids, node=self.node)
        run.claimed.update(job.id for job in jobs)
        return jobs

    def _process(self, run: _Run, jobs: list[Job]) -> None:
        backend = run.backend
        assert backend is not None
        recorder = run.recorder
        works: list[Work] = []
        for job in jobs:
            with job_context(job.uid):
                try:
                    if job.dedup and recorder.reuse_previous_answer(job, backend):
                        continue
                    works.append(prepare(job, self.config))
                except PermanentError as exc:
                    recorder.fail(job, exc.message, backend)
                except (StopRecording, StorageUnavailable):
                    raise
                except Exception as exc:  # a decoder bug on a hostile file must not take the worker down
                    log.exception("unexpected error while preparing images")
                    recorder.fail(job, msg("unexpected", reason=f"{type(exc).__name__}: {exc}"), backend)
        if not works:
            return
        with job_context(*(w.job.uid for w in works)):
            self._answer_and_record(run, backend, recorder, works)

    def _answer_and_record(self, run: _Run, backend: Backend, recorder: Recorder, works: list[Work]) -> None:
        interactive = len(works) == 1 and works[0].job.priority <= Priority.INTERACTIVE
        run.in_hand, run.in_hand_since = [w.job for w in works], time.monotonic()
        try:
            if interactive and len(works[0].requests) == 1:
                self._answer_streaming(backend, works[0])
            else:
                self._answer_batched(backend, works)
        except OutOfMemoryError as exc:
            if not self._still_mine(run):
                return
            self.batch_size = max(1, self.batch_size // 2)
            log.warning("out of memory; batch size now %d", self.batch_size)
            for work in works:
                recorder.retry_or_fail(work.job, exc, backend)
            return
        except TransientError as exc:
            if self._still_mine(run):
                for work in works:
                    recorder.retry_or_fail(work.job, exc, backend)
            return
        except TuwenError as exc:  # a permanent failure
            if not self._still_mine(run):
                return
            if len(works) > 1:  # answer one by one so one bad job cannot fail the rest
                for work in works:
                    self._process_single(run, backend, recorder, work)
                return
            recorder.fail(works[0].job, exc.message, backend)
            return
        except Exception as exc:
            if not self._still_mine(run):
                return
            # Not a failure the backend understood: record it on the jobs (a poison job must not crash the
            # worker forever), then let the supervisor restart the backend in case its state is broken.
            for work in works:
                recorder.fail(work.job, msg("unexpected", reason=f"{type(exc).__name__}: {exc}"), backend)
            raise
        finally:
            run.in_hand, run.in_hand_since = [], None
        if not self._still_mine(run):
            log.warning("an answer arrived after its job timed out; discarded")
            return
        for work in works:
            with job_context(work.job.uid):
                recorder.complete(work, backend, self._ocr_text(backend, work))
                self.jobs_done += 1

    def _still_mine(self, run: _Run) -> bool:
        """False when the watchdog has given this run's jobs to a fresh thread (they timed out)."""
        return run is self._run

    def _process_single(self, run: _Run, backend: Backend, recorder: Recorder, work: Work) -> None:
        try:
            self._answer_batched(backend, [work])
        except TransientError as exc:
            recorder.retry_or_fail(work.job, exc, backend)
        except TuwenError as exc:
            recorder.fail(work.job, exc.message, backend)
        else:
            recorder.complete(work, backend, self._ocr_text(backend, work))
            self.jobs_done += 1

    def _answer_streaming(self, backend: Backend, work: Work) -> None:
        listener = self.queue.text_listener(work.job.uid)
        request = work.requests[0]
        work.answers = [backend.stream(request, listener) if listener else backend.answer(request)]

    def _answer_batched(self, backend: Backend, works: list[Work]) -> None:
        requests = [request for work in works for request in work.requests]
        answers: list[Answer] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            answers.extend(backend.batch(chunk) if len(chunk) > 1 else [backend.answer(chunk[0])])
        for work in works:
            work.answers, answers = answers[: len(work.requests)], answers[len(work.requests) :]

    def _ocr_text(self, backend: Backend, work: Work) -> str | None:
        if backend.name == "ocr":
            return join_pages([str(a.extra.get("ocr_text", "")) for a in work.answers])
        if not self.config.model.ocr_step:
            return None
        if self._ocr_engine is None:
            from service.backends.ocr_backend import OcrEngine

            self._ocr_engine = OcrEngine()
        engine = self._ocr_engine
        pages = [page for image in work.images for page in image.pages]
        return join_pages([engine.read(page) for page in pages])  # type: ignore[attr-defined]

    # -- the stuck-job watchdog --------------------------------------------------------------------

    def _watch(self) -> None:
        timeout = self.config.model.job_timeout_seconds
        while not self._stop.wait(WATCHDOG_TICK_SECONDS):
            run = self._run
            since = run.in_hand_since
            if since is None or time.monotonic() - since < timeout or not run.in_hand:
                continue
            try:
                self._abandon(run, timeout)
            except Exception:
                log.exception("handling a stuck job failed")

    def _abandon(self, run: _Run, timeout: float) -> None:
        """Give up on a stuck thread: retry its jobs once (fail them the second time) on a fresh one."""
        jobs = list(run.in_hand)
        self.state, self.stuck_jobs = "stuck", [job.uid for job in jobs]
        self.error = msg(
            "job_stuck", jobs=", ".join(uid[:8] for uid in self.stuck_jobs), seconds=f"{timeout:g}"
        )
        log.error("%s", self.error)
        fresh = self._new_run(run.generation + 1)
        with self._lock:
            self._run = fresh
        if run.supervisor is not None:
            run.supervisor.stop_event.set()
        backend = run.backend
        cancel = getattr(backend, "cancel", None)
        if callable(cancel):
            try:
                cancel()
            except Exception:
                log.exception("cancelling the stuck generation failed")
        for job in jobs:
            with job_context(job.uid):
                if job.timeouts >= 1:
                    run.recorder.fail(job, msg("job_timeout", seconds=f"{timeout:g}"), backend)
                else:
                    self.store.requeue_timed_out(job.id)
                    log.warning("re-queued after outliving job_timeout_seconds (%g s); retried once", timeout)
        run.claimed.difference_update(job.id for job in jobs)
        if run.claimed:
            self.store.requeue(sorted(run.claimed))
            run.claimed.clear()
        self.restarts += 1
        if run.supervisor is not None and run.supervisor.alive:
            run.supervisor.stop(ABANDON_GRACE_SECONDS)  # let a cancelled generation release the GPU first
        if not self._stop.is_set():
            self._start_run(fresh)
        self.queue.notify()


def _close(backend: Backend) -> None:
    try:
        backend.close()
    except Exception:
        log.exception("closing the backend failed")
