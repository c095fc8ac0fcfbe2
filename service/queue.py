"""The persistent job queue: every event becomes a job row before any work starts.

The queue lives in SQLite so a crash or power cut loses nothing. In memory we keep only what cannot be
persisted: futures for in-process callers waiting on a result, streaming listeners, and the condition the
model worker sleeps on.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import asdict
from datetime import datetime
from typing import Any

from db.files import FileSeen, FileStore
from db.models import Job, JobStatus
from db.store import Store
from service.errors import QueueFull, WorkerUnavailable
from service.events import FILE_SOURCES, Event, Priority
from service.files import display_path
from service.logs import job_context
from service.messages import Message
from service.waiting import wait_for, wait_for_all

log = logging.getLogger(f"tuwen.{__name__}")

FinishedListener = Callable[[Job], None]


TextListener = Callable[[str], None]


def prompt_hash(question: str) -> str:
    """A short hash of the question, recorded with answers so a changed prompt is noticed."""
    return hashlib.sha256(clean_text(question).encode("utf-8")).hexdigest()[:16]


class JobQueue:
    """Submit events, wait for their results, and hear about every finished job."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._wakeup = threading.Condition()
        self._pending = False
        self._futures: dict[str, Future[Job]] = {}
        self._text_listeners: dict[str, TextListener] = {}
        self._finished_listeners: list[FinishedListener] = []
        self._updated_listeners: list[FinishedListener] = []
        self._interactive: set[str] = set()
        self._admitting = 0  # admitted by `admit()`, not yet submitted
        # A smoothed interactive job time, for Retry-After when the queue is full.
        self.recent_job_seconds = 1.0
        self._lock = threading.Lock()
        self.accepting = True
        # Whether a model worker can (soon) answer. The worker installs its own check here, so a source
        # that holds only the queue (a chat bot) can tell a user at once that the model is down instead
        # of leaving them to wait for a timeout.
        self.worker_available: Callable[[], bool] = lambda: True
        # (model id, model version) of the backend answering now, set by the worker once it is loaded: a
        # watcher re-answers a touched file only when its recorded answer came from another model.
        self.model_identity: tuple[str, str] | None = None
        self.files = FileStore(store)
        # This node's `[node] name` when several share the database: an interactive job is recorded with it
        # and only this node claims it (its caller is connected here). None: any worker may (one node).
        self.origin_node: str | None = None

    def submit(
        self,
        event: Event,
        *,
        dedup: bool = False,
        on_text: TextListener | None = None,
        also: Callable[[Any, Job], object] | None = None,
    ) -> Job:
        """Persist `event` as a queued job and wake the worker. Returns the new row.

        With `dedup`, the worker reuses a previous answer for the same content, prompt and model
        instead of running the model again (a scan dropped twice, touched or renamed). `also` writes more
        in the job's own transaction (`Store.add_job`).
        """
        if not self.accepting:
            raise RuntimeError("the queue is shutting down")
        uid = uuid.uuid4().hex
        with self._lock:
            if on_text is not None:
                self._text_listeners[uid] = on_text
            if event.priority <= Priority.INTERACTIVE:
                self._interactive.add(uid)
        try:
            origin = self.origin_node if event.priority <= Priority.INTERACTIVE else None
            job = self.store.add_job(
                **_row_fields(event, uid),
                status=JobStatus.QUEUED,
                dedup=1 if dedup else 0,
                origin_node=origin,
                also=also,
            )
        except BaseException:
            # A job that was never stored must not hold an interactive slot (or a listener) forever.
            with self._lock:
                self._interactive.discard(uid)
                self._text_listeners.pop(uid, None)
            raise
        with job_context(job.uid):
            log.info("queued from %s %s (priority %d)", job.source, job.source_ref, job.priority)
        self.notify()
        return job

    def submit_backlog(
        self,
        events: list[Event],
        *,
        dedup: bool = False,
        also: Callable[[Any, list[int]], object] | None = None,
    ) -> list[int]:
        """Persist many backlog events as queued jobs in one transaction (a folder's settled scans).

        Returns the new jobs' ids in the events' order; `also` writes more in the same transaction once
        they have them (the scans' `files` rows). Interactive events, which someone waits on, use `submit`.
        """
        if not self.accepting:
            raise RuntimeError("the queue is shutting down")
        rows: list[dict[str, Any]] = []
        for event in events:
            if event.priority <= Priority.INTERACTIVE:
                raise ValueError("submit_backlog takes backlog events only")
            fields = _row_fields(event, uuid.uuid4().hex)
            rows.append(
                {**fields, "status": JobStatus.QUEUED, "dedup": 1 if dedup else 0, "origin_node": None}
            )
        ids = self.store.add_jobs(rows, also=also)
        for row in rows:
            with job_context(str(row["uid"])):
                log.info("queued from %s %s (priority %d)", row["source"], row["source_ref"], row["priority"])
        if ids:
            self.notify()
        return ids

    def record_refused(self, event: Event, message: Message) -> Job:
        """Record an event refused before it reached the queue (e.g. an undecodable upload) as a failed job.

        A refused call is still history; listeners (metrics, feeds) hear of it like any finished job.
        """
        job = self.store.add_job(**_row_fields(event, uuid.uuid4().hex), status=JobStatus.FAILED)
        finished = self.store.finish(
            job.id, status=JobStatus.FAILED, error=str(message), error_code=message.code
        )
        self.finished(finished)
        return finished

    def result(self, uid: str) -> Future[Job]:
        """A future resolved with the finished job (done or failed) by the worker in this process."""
        with self._lock:
            future = self._futures.get(uid)
            if future is None:
                future = self._futures[uid] = Future()
        job = self.store.get_by_uid(uid)
        if job is not None and job.status in (JobStatus.DONE, JobStatus.FAILED):
            with self._lock:  # finished before anyone asked: nothing will pop this future later
                self._futures.pop(uid, None)
            if not future.done():
                future.set_result(job)
        return future

    def forget_result(self, uid: str, future: Future[Job]) -> None:
        """Drop an unresolved `result()` future nobody waits for any more (its job finished elsewhere)."""
        with self._lock:
            if self._futures.get(uid) is future and not future.done():
                self._futures.pop(uid, None)

    async def wait(
        self,
        uid: str,
        timeout: float | None = None,
        *,
        gone: Callable[[], bool] | None = None,
        tick: float = 1.0,
    ) -> Job:
        """The finished job (done or failed), whichever process answered it (`service.waiting`).

        `TimeoutError` after `timeout` seconds; `WorkerUnavailable` once `gone()` (by default: no worker of
        this process can answer) says nobody will.
        """
        return await wait_for(self, uid, timeout, gone or (lambda: not self.worker_available()), tick)

    async def wait_all(
        self,
        uids: Iterable[str],
        on_finished: Callable[[Job], None],
        *,
        gone: Callable[[], bool] | None = None,
        tick: float = 0.2,
    ) -> None:
        """Call `on_finished(job)` as each of `uids` finishes, until all have (`service.waiting`)."""
        await wait_for_all(self, uids, on_finished, gone or (lambda: not self.worker_available()), tick)

    def interactive_waiting(self) -> int:
        """Interactive jobs submitted in this process and not finished yet."""
        with self._lock:
            return len(self._interactive)

    def slots_in_use(self) -> int:
        """Interactive slots taken: jobs waiting plus requests admitted and not yet submitted."""
        with self._lock:
            return len(self._interactive) + self._admitting

    @contextlib.contextmanager
    def admit(self, limit: int) -> Iterator[None]:
        """Hold one interactive slot while a request stores its images and submits its job.

        The one admission rule for the API, the pages and the chat bots: `WorkerUnavailable` when no
        worker can answer, `QueueFull` (with a Retry-After from recent job times) when `limit` interactive
        jobs are waiting or being admitted. The slot is given back however the block ends; a submitted job
        then holds its own until it finishes.
        """
        if not self.accepting or not self.worker_available():
            raise WorkerUnavailable()
        with self._lock:
            if len(self._interactive) + self._admitting >= limit:
                raise QueueFull(limit, max(1, min(60, math.ceil(self.recent_job_seconds))))
            self._admitting += 1
        try:
            yield
        finally:
            with self._lock:
                self._admitting -= 1

    def add_updated_listener(self, listener: FinishedListener) -> None:
        """Call `listener(job)` after a finished job is changed (a staff review or correction)."""
        self._updated_listeners.append(listener)

    def updated(self, job: Job) -> None:
        """Announce a changed finished job (e.g. reviewed); listener errors are logged."""
        with job_context(job.uid):
            for listener in self._updated_listeners:
                try:
                    listener(job)
                except Exception:
                    log.exception("an updated-job listener failed")

    def add_finished_listener(self, listener: FinishedListener) -> None:
        """Call `listener(job)` on the worker thread after each job is recorded done or failed."""
        self._finished_listeners.append(listener)

    # -- for the worker --------------------------------------------------------------------------

    def notify(self) -> None:
        """Wake the worker: there is new work."""
        with self._wakeup:
            self._pending = True
            self._wakeup.notify_all()

    def wait_for_work(self, timeout: float) -> bool:
        """Sleep until `notify()` or `timeout`; True when woken by `notify()`."""
        with self._wakeup:
            if not self._pending:
                self._wakeup.wait(timeout)
            woken, self._pending = self._pending, False
            return woken

    def text_listener(self, uid: str) -> TextListener | None:
        """The streaming listener registered for job `uid`, if any."""
        with self._lock:
            return self._text_listeners.get(uid)

    def finished(self, job: Job) -> None:
        """Announce a finished job: resolve its future and tell every listener. Listener errors are logged."""
        with self._lock:
            self._text_listeners.pop(job.uid, None)
            self._interactive.discard(job.uid)
            future = self._futures.pop(job.uid, None)
            if job.priority <= Priority.INTERACTIVE and job.latency_ms:
                self.recent_job_seconds = 0.8 * self.recent_job_seconds + 0.2 * job.latency_ms / 1000
        with job_context(job.uid):
            for listener in self._finished_listeners:
                try:
                    listener(job)
                except Exception:  # a sink must never take the worker down
                    log.exception("a finished-job listener failed")
        if future is not None and not future.done():
            future.set_result(job)

    # -- for sources: file states and jobs, so adapters never query the store themselves ------------

    def file_states(self, source: str, source_ref: str) -> dict[bytes, FileSeen]:
        """Every recorded file of one watch (or batch folder), by path bytes."""
        return self.files.load(source, source_ref)

    def job(self, job_id: int) -> Job | None:
        """One job by id."""
        return self.store.get(job_id)

    def finished_file_jobs(self, source: str, source_ref: str) -> Iterator[Job]:
        """The finished job each recorded file's sidecars show (start-up repair), streamed."""
        return self.files.finished_jobs(source, source_ref)

    def finished_elsewhere(self, source: str, source_ref: str, since: datetime) -> list[Job]:
        """Jobs of one source instance other nodes finished since `since` (none when this node is alone)."""
        if self.origin_node is None:
            return []  # one node: every answer was heard here, through `finished`
        return self.store.finished_elsewhere(source, source_ref, since, self.origin_node)

    def uncatalogued_jobs(self, source: str, source_ref: str) -> list[Job]:
        """Finished jobs of one watch whose catalogue row was never appended (a crash in between)."""
        return self.store.uncatalogued_jobs(source, source_ref)

    def mark_catalogued(self, job_id: int) -> None:
        """Record that a job's catalogue row is on disk."""
        self.store.mark_catalogued(job_id)

    def latest_finished_job_for_file(self, source: str, source_ref: str, file_path: str) -> Job | None:
        """The newest done or failed job of one source instance for a file (the one its sidecars show)."""
        return self.store.latest_finished_job_for_file(source, source_ref, display_path(file_path))


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` a database can store: lone surrogates (invalid in UTF-8, legal in a JSON string) as U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def _row_fields(event: Event, uid: str) -> dict[str, Any]:
    """The job row's columns that come from the event (one mapping for queued and refused events)."""
    return _cleaned(_raw_fields(event, uid))


def _cleaned(fields: dict[str, object]) -> dict[str, object]:
    # Text columns only: `images` keeps the real (surrogate-escaped) paths, which its JSON can hold.
    for name in ("question", "source_ref", "conversation_id", "reply_to"):
        value = fields.get(name)
        if isinstance(value, str):
            fields[name] = clean_text(value)
    history = fields.get("history")
    if isinstance(history, list):
        fields["history"] = [
            {k: clean_text(v) if isinstance(v, str) else v for k, v in t.items()} for t in history
        ]
    return fields


def _raw_fields(event: Event, uid: str) -> dict[str, object]:
    return {
        "uid": uid,
        "source": event.source,
        "source_ref": event.source_ref,
        "priority": int(event.priority),
        "question": event.question,
        "prompt_hash": prompt_hash(event.question),
        "images": list(event.images),
        # Display form (undecodable bytes as U+FFFD): a text column cannot hold a GBK name's raw bytes; the
        # real path stays in `images`, whose JSON keeps them escaped.
        "file_path": display_path(event.images[0]) if event.source in FILE_SOURCES and event.images else None,
        "file_size": event.file_size,
        "file_mtime": event.file_mtime,
        "sha256": event.sha256,
        "conversation_id": event.conversation_id,
        "history": [asdict(turn) for turn in event.history],
        "reply_to": event.reply_to,
        "notes": list(event.notes) or None,
        "options": event.options.as_dict() or None,
        "request_id": event.request_id,
        "extra": {
            name: value
            for name, value in (
                ("client_model", event.client_model),
                ("knowledge_base_id", event.knowledge_base_id),
                ("user_id", event.user_id),
            )
            if value is not None
        },
    }
