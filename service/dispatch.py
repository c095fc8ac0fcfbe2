"""Continuous dispatch, for a backend that answers many requests at once (a remote vLLM or SGLang server).

With `[openai] concurrency` N > 1 the worker thread stops answering batches and becomes a dispatcher: it
keeps up to N backlog jobs in flight on a pool of threads and claims the next one as each answer arrives,
so there is no batch barrier (the slowest request holds only its own slot) and a continuously batching
server sees N requests, not `[model] batch_size`. Interactive jobs (someone is waiting, often watching the
answer stream in) have N slots of their own: a question goes out at once even while the backlog fills every
backlog slot; the server batches whatever arrives.

Each job runs on its pool thread exactly as the sequential worker runs one job (`WorkerRun.process`):
prepare, answer (streamed when someone listens), record. The stuck-job watchdog sees every job in hand with
its own start time; a run it abandons stops dispatching, and whatever its threads bring back is discarded.

A slot is a request at the server: it is free again as soon as the answer has arrived, while the thread
goes on to record it (the database write, two sidecars). Freed only after the recording, the slots of a
burst of answers arriving together stayed empty while 64 of them were recorded, and a server with room for
64 saw 40 on average (74 % of the ideal at 0.5 s latency). Answers still being recorded are bounded too
(`concurrency` of them): past that no new job is claimed until they catch up.
"""

from __future__ import annotations

import logging
import threading
import time
from queue import SimpleQueue
from typing import TYPE_CHECKING

from db.models import Job
from service.errors import StorageUnavailable
from service.events import Priority
from service.logs import job_context
from service.recorder import StopRecording

if TYPE_CHECKING:
    from service.worker_run import WorkerRun

log = logging.getLogger(f"tuwen.{__name__}")

FULL_WAIT_SECONDS = 0.25  # while every slot is busy: how often to look again (an answer wakes it sooner)
# Interactive jobs are submitted in this process (the queue counts them), so the database is asked for them
# only when there are some, and otherwise this often (a job left queued by a restart, say).
INTERACTIVE_SWEEP_SECONDS = 2.0
INTERACTIVE = (int(Priority.INTERACTIVE) - 1000, int(Priority.INTERACTIVE))
BACKLOG = (int(Priority.INTERACTIVE) + 1, 1_000_000)


class Dispatcher:
    """Up to `concurrency` backlog jobs and as many interactive ones in flight, claimed as slots free."""

    def __init__(self, run: WorkerRun, concurrency: int) -> None:
        self.run = run
        self.concurrency = concurrency
        # Backlog slots are refilled a few at a time while others are in flight: one claim (a write
        # transaction) per answer was a third of the service's own time at zero latency, and waiting for
        # 1/16 of the slots costs a remote at most ~3 % of its time.
        self.refill = max(1, concurrency // 16)
        self._lock = threading.Lock()
        self._busy = {"interactive": 0, "backlog": 0}  # requests at the server
        self._threads = 0  # jobs in hand: at the server or being recorded
        self._swept = 0.0
        # The threads that run jobs: started as needed, then reused (a thread start per job waited for
        # the new thread to get the GIL, with the dispatcher's next claims behind it).
        self._todo: SimpleQueue[tuple[Job, str] | None] = SimpleQueue()
        self._pool = 0
        self._idle = 0  # pool threads waiting for a job, not yet promised one

    def free(self, kind: str) -> int:
        """Free slots of one kind ("interactive" or "backlog")."""
        with self._lock:
            return self.concurrency - self._busy[kind]

    def serve(self, stop: threading.Event) -> None:
        """Claim and hand out jobs until `stop` (or until the watchdog gives this run's work to another)."""
        run, queue = self.run, self.run.owner.queue
        log.info("dispatching up to %d requests at once", self.concurrency)
        try:
            while not stop.is_set() and run.current():
                free_interactive, free_backlog = self._wanted()
                if free_interactive <= 0 and free_backlog <= 0:
                    queue.wait_for_work(FULL_WAIT_SECONDS)  # an answer arriving notifies the queue
                    continue
                try:
                    jobs = self._claim(free_interactive, free_backlog)
                except StorageUnavailable:
                    stop.wait(2.0)  # Store.health logged it; claims resume once the disk is writable
                    continue
                if not jobs:
                    run.idle(stop)
                    continue
                for job in jobs:
                    self._start(job)
        finally:
            # No new jobs start; those in flight finish and are recorded (the service's stop timeout
            # re-queues what is still out after it, and these threads, being daemons, never hold up exit).
            while self.busy() and run.current():
                queue.wait_for_work(FULL_WAIT_SECONDS)
            for _ in range(self._pool):
                self._todo.put(None)  # each pool thread ends once it is done with its job

    def busy(self) -> int:
        """Jobs in hand (at the server or being recorded)."""
        with self._lock:
            return self._threads

    def _start(self, job: Job) -> None:
        kind = "interactive" if job.priority <= Priority.INTERACTIVE else "backlog"
        with self._lock:
            self._busy[kind] += 1
            self._threads += 1
            grow = self._idle == 0
            if grow:
                self._pool += 1
            else:
                self._idle -= 1  # that thread takes this job
        self._todo.put((job, kind))
        if grow:
            # Daemon threads rather than a ThreadPoolExecutor (which joins its threads at exit): a request
            # the server never answers cannot keep the process alive.
            threading.Thread(
                target=self._serve_jobs, name=f"tuwen-dispatch-{self._pool}", daemon=True
            ).start()

    def _serve_jobs(self) -> None:
        while (item := self._todo.get()) is not None:
            self._one(*item)
            with self._lock:
                self._idle += 1

    def _wanted(self) -> tuple[int, int]:
        """How many interactive and backlog jobs to claim now (0 when not worth a claim yet)."""
        with self._lock:
            interactive, backlog = self._busy["interactive"], self._busy["backlog"]
            recording = self._threads - interactive - backlog
        if recording >= self.concurrency:
            return 0, 0  # answers arrive faster than they are recorded: let the recording catch up
        free_backlog = self.concurrency - backlog
        if backlog and free_backlog < self.refill:
            free_backlog = 0
        free_interactive = self.concurrency - interactive
        now = time.monotonic()
        if (
            self.run.owner.queue.interactive_waiting() <= interactive
            and now - self._swept < INTERACTIVE_SWEEP_SECONDS
        ):
            free_interactive = 0  # none waiting here: no need to ask the database
        elif free_interactive > 0:
            self._swept = now
        return free_interactive, free_backlog

    def _claim(self, free_interactive: int, free_backlog: int) -> list[Job]:
        claim = self.run.claim
        jobs = claim(free_interactive, INTERACTIVE) if free_interactive > 0 else []
        if free_backlog > 0:
            jobs += claim(free_backlog, BACKLOG)
        return jobs

    def _one(self, job: Job, kind: str) -> None:
        freed = False

        def answered() -> None:  # the answer is here (or the job failed): its slot may take the next one
            nonlocal freed
            with self._lock:
                if freed:
                    return
                freed = True
                self._busy[kind] -= 1
            self.run.owner.queue.notify()

        try:
            with job_context(job.uid):
                self.run.process([job], answered=answered)
        except StopRecording:
            pass  # stopping while storage is down: the job stays claimed, re-queued by release or next start
        except Exception:  # recorded on the job by process(); one job must not stop the others
            log.exception("dispatching a job failed")
        finally:
            answered()
            with self._lock:
                self._threads -= 1
            self.run.owner.queue.notify()  # recorded: the dispatcher may claim again
