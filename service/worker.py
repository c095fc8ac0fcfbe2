"""The model worker: the one thread that owns the backend (and so the GPU).

It claims jobs from the persistent queue, decodes their images (`service.work`), asks the backend and has
the `Recorder` write the result; one life of that thread is a `WorkerRun` (service/worker_run.py). Two
watchdogs keep it honest, as Frigate's detector watchdog does:

- a crash (an exception the backend did not understand) restarts the run through a `Supervisor`, at most
  `MAX_RESTARTS_PER_MINUTE` times a minute; after that it stays down and `/health` says so;
- a job in hand longer than `[model] job_timeout_seconds` (a generation that never ends, a server that
  accepts and never answers) makes `/health` answer 503 naming the job; the stuck run is abandoned (the
  backend is asked to `cancel()` if it can), a fresh backend is loaded on a new run, and the job is retried
  once, then failed with a clear message. A late answer from the abandoned run is discarded.

Jobs a run had claimed go back to the queue on a crash or stop, so nothing is lost. Storage faults (disk
full, database read-only) while claiming or recording are waited out with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from db.store import Store
from service.backends.base import Backend
from service.backlog import BacklogPause
from service.config import Config
from service.logs import job_context
from service.messages import Message, msg
from service.queue import JobQueue
from service.retry import Backoff
from service.supervisor import ComponentStatus, Supervisor
from service.worker_run import WorkerRun

log = logging.getLogger(f"tuwen.{__name__}")

MAX_RESTARTS_PER_MINUTE = 3
WATCHDOG_TICK_SECONDS = 0.25
# How long a timed-out run gets to let go of the backend before the fresh one loads regardless.
ABANDON_GRACE_SECONDS = 10.0

BackendFactory = Callable[[Config], Backend]


class ModelWorker:
    """Owns the backend; runs it on a supervised thread, watched for stuck jobs."""

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
        self.backend_factory = backend_factory
        self.only_uids = only_uids  # a one-shot CLI run answers only its own jobs
        self.state = "starting"  # starting | loading | ready | stuck | failed | dead | stopped
        self.error: Message | None = None
        self.stuck_jobs: list[str] = []  # uids of the jobs that outlived job_timeout_seconds last
        self.batch_size = config.model.batch_size
        self.jobs_done = 0
        self.restarts = 0
        self.stopping = threading.Event()
        # One per process, shared with the HTTP routes that pause and resume, so a pause is seen at once here
        # (other processes on the database see it within `backlog.RECHECK_SECONDS`).
        self.backlog = BacklogPause(store)
        self.current_run = WorkerRun(self, 0)
        self._watchdog: threading.Thread | None = None
        self._ocr_engine: Any = None
        queue.worker_available = self.available

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def backend(self) -> Backend | None:
        """The backend of the current run (None while loading or after a crash)."""
        return self.current_run.backend

    def answer_only(self, uids: set[str]) -> None:
        """Restrict this worker to these jobs (a one-shot CLI run with no service beside it)."""
        self.only_uids = set(uids) | (self.only_uids or set())
        self.queue.notify()

    def start(self) -> None:
        """Start the first run (it loads the model, so start-up never blocks on it) and the watchdog."""
        self._start_run(self.current_run)
        self._watchdog = threading.Thread(target=self._watch, name="tuwen-worker-watchdog", daemon=True)
        self._watchdog.start()

    def _start_run(self, run: WorkerRun) -> None:
        run.supervisor = Supervisor(
            "model-worker",
            run.serve,
            backoff=Backoff(base=2.0, cap=30.0),
            max_restarts=MAX_RESTARTS_PER_MINUTE,
            on_crash=lambda exc: self._after_crash(run, exc),
            on_give_up=lambda exc: self._give_up(run),
        )
        run.supervisor.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; finish the one in hand within `timeout`, else leave it to be re-queued."""
        self.stopping.set()
        self.queue.notify()
        run = self.current_run
        if run.supervisor is not None:
            run.supervisor.stop_event.set()
            if not run.supervisor.stop(timeout):
                count = self.store.requeue(sorted(run.claimed))
                log.warning("model worker still busy after %.0f s; re-queued %d job(s)", timeout, count)
        if self._watchdog is not None:
            self._watchdog.join(2)
        self.state = "stopped"

    def ready(self, backend: Backend) -> None:
        """A run has loaded its backend: the worker answers again."""
        self.state, self.error, self.stuck_jobs = "ready", None, []
        self.queue.model_identity = (backend.model_id, backend.model_version)

    def ocr_engine(self) -> Any:
        """The OCR engine for `[model] ocr_step`, built on first use and shared by every run."""
        if self._ocr_engine is None:
            from service.backends.ocr_backend import OcrEngine

            self._ocr_engine = OcrEngine()
        return self._ocr_engine

    @property
    def alive(self) -> bool:
        """Whether the worker can answer (model loaded and thread running)."""
        supervisor = self.current_run.supervisor
        return self.state == "ready" and supervisor is not None and supervisor.alive

    def available(self) -> bool:
        """Whether queued jobs can still be answered: running, loading, or restarting after a stuck job."""
        supervisor = self.current_run.supervisor
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

    def _after_crash(self, run: WorkerRun, exc: BaseException) -> None:
        """The supervisor's clean-up after a crash: give the claims back and drop the backend."""
        run.release()
        self.restarts += 1
        self.error = msg("unexpected", reason=f"{type(exc).__name__}: {exc}")

    def _give_up(self, run: WorkerRun) -> None:
        if run is self.current_run:
            self.state = "dead"
            log.error("model worker crashed %d times in a minute; giving up", MAX_RESTARTS_PER_MINUTE + 1)

    # -- the stuck-job watchdog --------------------------------------------------------------------

    def _watch(self) -> None:
        timeout = self.config.model.job_timeout_seconds
        while not self.stopping.wait(WATCHDOG_TICK_SECONDS):
            run = self.current_run
            since = run.in_hand_since
            if since is None or time.monotonic() - since < timeout or not run.in_hand:
                continue
            try:
                self._abandon(run, timeout)
            except Exception:
                log.exception("handling a stuck job failed")

    def _abandon(self, run: WorkerRun, timeout: float) -> None:
        """Give up on a stuck run: retry its jobs once (fail them the second time) on a fresh one."""
        # With a concurrent remote only some of the jobs in hand are stuck; the others are re-queued below
        # (the fresh run answers them again; whatever the old run brings back is discarded).
        jobs = run.held_longer_than(timeout) or run.in_hand
        self.state, self.stuck_jobs = "stuck", [job.uid for job in jobs]
        shown = ", ".join(uid[:8] for uid in self.stuck_jobs)
        self.error = msg("job_stuck", jobs=shown, seconds=f"{timeout:g}")
        log.error("%s", self.error)
        fresh = WorkerRun(self, run.generation + 1)
        self.current_run = fresh
        if run.supervisor is not None:
            run.supervisor.stop_event.set()
        cancel = getattr(run.backend, "cancel", None)
        if callable(cancel):
            try:
                cancel()
            except Exception:
                log.exception("cancelling the stuck generation failed")
        for job in jobs:
            with job_context(job.uid):
                if job.timeouts >= 1:
                    run.recorder.fail(job, msg("job_timeout", seconds=f"{timeout:g}"), run.backend)
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
        if not self.stopping.is_set():
            self._start_run(fresh)
        self.queue.notify()
