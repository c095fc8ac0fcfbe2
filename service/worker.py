"""The model worker: the one thread that owns the backend (and so the GPU).

It claims jobs from the persistent queue, decodes their images, asks the backend, records the result and
announces it. Like Frigate's detector process it is supervised: an unexpected crash restarts it, up to
`MAX_RESTARTS_PER_MINUTE` times, after which it stays down and `/health` says so. Jobs it had claimed go
back to the queue, so a crash loses nothing.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from db.models import Job, JobStatus, utcnow
from db.store import Store
from service.backends.base import Answer, Backend, Request, Turn
from service.config import Config
from service.errors import OutOfMemoryError, PermanentError, TransientError, TuwenError
from service.events import Priority
from service.images import DecodedImage, decode_image
from service.messages import Message, msg
from service.queue import JobQueue

log = logging.getLogger("tuwen.service.worker")

MAX_RESTARTS_PER_MINUTE = 3
IDLE_POLL_SECONDS = 1.0

BackendFactory = Callable[[Config], Backend]


@dataclass
class _Work:
    """A claimed job with its decoded images and the requests it needs answered."""

    job: Job
    images: list[DecodedImage]
    requests: list[Request]
    answers: list[Answer] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


class ModelWorker:
    """Owns the backend; runs in its own thread; supervised."""

    def __init__(
        self,
        config: Config,
        store: Store,
        queue: JobQueue,
        backend_factory: BackendFactory,
        *,
        only_uids: set[str] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.queue = queue
        self._backend_factory = backend_factory
        self._only_uids = only_uids  # the CLI's `ask`/`batch` answer only their own jobs
        self.backend: Backend | None = None
        self.state = "starting"  # starting | loading | ready | failed | dead | stopped
        self.error: Message | None = None
        self.batch_size = config.model.batch_size
        self._stop = threading.Event()
        self._claimed: set[int] = set()
        self._thread: threading.Thread | None = None
        self._ocr_engine: object | None = None
        self.jobs_done = 0
        queue.worker_available = self.available

    # -- lifecycle -------------------------------------------------------------------------------

    def answer_only(self, uids: set[str]) -> None:
        """Restrict this worker to these jobs (the CLI's one-shot runs beside a running `tuwen serve`)."""
        self._only_uids = set(uids) | (self._only_uids or set())
        self.queue.notify()

    def start(self) -> None:
        """Start the worker thread (loads the model there, so start-up never blocks on it)."""
        self._thread = threading.Thread(target=self._supervise, name="tuwen-model-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; finish the one in hand within `timeout`, else leave it to be re-queued."""
        self._stop.set()
        self.queue.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                count = self.store.requeue(sorted(self._claimed))
                log.warning("model worker still busy after %.0f s; re-queued %d job(s)", timeout, count)
        self.state = "stopped"

    @property
    def alive(self) -> bool:
        """Whether the worker can answer (model loaded and thread running)."""
        return self.state == "ready" and self._thread is not None and self._thread.is_alive()

    def available(self) -> bool:
        """Whether queued jobs can still be answered: running, or still loading the model."""
        thread_ok = self._thread is None or self._thread.is_alive()
        return self.state in ("starting", "loading", "ready") and thread_ok

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

    def _supervise(self) -> None:
        restarts: deque[float] = deque()
        while not self._stop.is_set():
            try:
                self._run()
                return
            except Exception as exc:  # the watchdog: log, re-queue, restart within limits
                log.exception("model worker crashed: %s", exc)
                self._release_claimed()
                self._close_backend()
                now = time.monotonic()
                restarts.append(now)
                while restarts and now - restarts[0] > 60:
                    restarts.popleft()
                if len(restarts) > MAX_RESTARTS_PER_MINUTE:
                    self.state = "dead"
                    self.error = msg("unexpected", reason=exc)
                    log.error("model worker crashed %d times in a minute; giving up", len(restarts))
                    return
                self._stop.wait(min(2 ** len(restarts), 30))

    def _run(self) -> None:
        if not self._load_backend():
            return
        try:
            while not self._stop.is_set():
                work = self._claim()
                if not work:
                    self.queue.wait_for_work(self._idle_timeout())
                    continue
                self._process(work)
        finally:
            self._release_claimed()
            self._close_backend()

    def _load_backend(self) -> bool:
        """Load the backend, retrying transient failures with backoff. False when stopping or hopeless."""
        delay = 2.0
        warned = False
        while not self._stop.is_set():
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
                self._stop.wait(delay)
                delay = min(delay * 2, 60)
                continue
            except TuwenError as exc:
                self.state, self.error = "failed", exc.message
                log.error("%s", exc.message)
                return False
            if warned:
                log.info("model available again")
            self.backend, self.state, self.error = backend, "ready", None
            log.info(
                "model ready: backend=%s model=%s version=%s (%.1f s)",
                backend.name,
                backend.model_id,
                backend.model_version,
                time.monotonic() - started,
            )
            return True
        return False

    def _close_backend(self) -> None:
        if self.backend is not None:
            try:
                self.backend.close()
            except Exception:
                log.exception("closing the backend failed")
            self.backend = None

    def _release_claimed(self) -> None:
        if self._claimed:
            self.store.requeue(sorted(self._claimed))
            self._claimed.clear()

    def _idle_timeout(self) -> float:
        due = self.store.next_due_time()
        if due is None:
            return IDLE_POLL_SECONDS * 5
        return max(0.05, min((due - utcnow()).total_seconds(), IDLE_POLL_SECONDS * 5))

    # -- one round -------------------------------------------------------------------------------

    def _claim(self) -> list[Job]:
        jobs = self.store.claim(
            self.batch_size, uids=sorted(self._only_uids) if self._only_uids is not None else None
        )
        self._claimed.update(job.id for job in jobs)
        return jobs

    def _process(self, jobs: list[Job]) -> None:
        works: list[_Work] = []
        for job in jobs:
            try:
                if job.dedup and self._reuse_previous_answer(job):
                    continue
                works.append(self._prepare(job))
            except PermanentError as exc:
                self._fail(job, exc.message)
            except Exception as exc:  # a decoder bug on a hostile file must not take the worker down
                log.exception("[job %s] unexpected error while preparing images", job.uid[:8])
                self._fail(job, msg("unexpected", reason=f"{type(exc).__name__}: {exc}"))
        if not works:
            return
        interactive = len(works) == 1 and works[0].job.priority <= Priority.INTERACTIVE
        try:
            if interactive and len(works[0].requests) == 1:
                self._answer_streaming(works[0])
            else:
                self._answer_batched(works)
        except OutOfMemoryError as exc:
            self.batch_size = max(1, self.batch_size // 2)
            log.warning("out of memory; batch size now %d", self.batch_size)
            for work in works:
                self._retry_or_fail(work.job, exc)
            return
        except TransientError as exc:
            for work in works:
                self._retry_or_fail(work.job, exc)
            return
        except TuwenError as exc:  # a permanent failure
            # A batch-level failure: answer the jobs one by one so one bad job cannot fail the rest.
            if len(works) > 1:
                for work in works:
                    self._process_single(work)
                return
            self._fail(works[0].job, exc.message)
            return
        except Exception as exc:
            # Not a failure the backend understood: record it on the jobs (a poison job must not crash
            # the worker forever), then let the supervisor restart the backend in case its state is broken.
            for work in works:
                self._fail(work.job, msg("unexpected", reason=f"{type(exc).__name__}: {exc}"))
            raise
        for work in works:
            self._complete(work)

    def _process_single(self, work: _Work) -> None:
        try:
            self._answer_batched([work])
        except TransientError as exc:
            self._retry_or_fail(work.job, exc)
        except TuwenError as exc:
            self._fail(work.job, exc.message)
        else:
            self._complete(work)

    def _prepare(self, job: Job) -> _Work:
        short = job.uid[:8]
        images = [decode_image(Path(path), self.config.images, short) for path in job.images]
        # A caller (the API, later) may ask for a shorter answer or more variety than the config's default.
        requested = job.extra.get("max_tokens")
        gen = functools.partial(
            Request,
            max_new_tokens=min(
                int(requested or self.config.model.max_new_tokens),
                self.config.model.max_new_tokens,
            ),
            temperature=float(job.extra.get("temperature", self.config.model.temperature)),
            job_id=short,
            requested_max_tokens=int(requested) if requested else None,
        )
        if len(images) == 1 and len(images[0].pages) > 1 and not job.history:
            # A multi-page TIFF: every page gets the question, and the answers are put together.
            requests = [gen(turns=(Turn("user", job.question, (page,)),)) for page in images[0].pages]
        else:
            pages = tuple(page for image in images for page in image.pages)
            requests = [gen(turns=_conversation(job, pages))]
        return _Work(job=job, images=images, requests=requests)

    def _answer_streaming(self, work: _Work) -> None:
        assert self.backend is not None
        listener = self.queue.text_listener(work.job.uid)
        request = work.requests[0]
        answer = self.backend.stream(request, listener) if listener else self.backend.answer(request)
        work.answers = [answer]

    def _answer_batched(self, works: list[_Work]) -> None:
        assert self.backend is not None
        requests = [request for work in works for request in work.requests]
        answers: list[Answer] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            answers.extend(self.backend.batch(chunk) if len(chunk) > 1 else [self.backend.answer(chunk[0])])
        for work in works:
            work.answers, answers = answers[: len(work.requests)], answers[len(work.requests) :]

    # -- recording -------------------------------------------------------------------------------

    def _complete(self, work: _Work) -> None:
        assert self.backend is not None
        job, answers = work.job, work.answers
        text = _join_pages([a.text for a in answers])
        ocr_text = self._ocr_text(work)
        reasoning = "\n\n".join(a.reasoning for a in answers if a.reasoning) or None
        first = work.images[0] if work.images else None
        finished = self.store.finish(
            job.id,
            status=JobStatus.DONE,
            answer=text,
            reasoning=reasoning,
            ocr_text=ocr_text,
            error=None,
            error_code=None,
            answer_kind=getattr(self.backend, "answer_kind", "model"),
            finish_reason="length" if any(a.finish_reason == "length" for a in answers) else "stop",
            backend=self.backend.name,
            model=self.backend.model_id,
            model_version=self.backend.model_version,
            width=first.width if first else None,
            height=first.height if first else None,
            pages=sum(len(image.pages) for image in work.images),
            prompt_tokens=sum(a.prompt_tokens for a in answers),
            completion_tokens=sum(a.completion_tokens for a in answers),
            latency_ms=(time.monotonic() - work.started) * 1000,
        )
        self._claimed.discard(job.id)
        self.jobs_done += 1
        log.info("[job %s] done in %.0f ms", job.uid[:8], finished.latency_ms or 0)
        self.queue.finished(finished)

    def _ocr_text(self, work: _Work) -> str | None:
        assert self.backend is not None
        if self.backend.name == "ocr":
            texts = [str(a.extra.get("ocr_text", "")) for a in work.answers]
            return _join_pages(texts)
        if not self.config.model.ocr_step:
            return None
        if self._ocr_engine is None:
            from service.backends.ocr_backend import OcrEngine

            self._ocr_engine = OcrEngine()
        engine = self._ocr_engine
        pages = [page for image in work.images for page in image.pages]
        return _join_pages([engine.read(page) for page in pages])  # type: ignore[attr-defined]

    def _reuse_previous_answer(self, job: Job) -> bool:
        assert self.backend is not None
        if not job.sha256:
            return False
        previous = self.store.find_answer_for_content(
            job.sha256, job.prompt_hash, self.backend.model_id, self.backend.model_version
        )
        if previous is None or previous.id == job.id:
            return False
        finished = self.store.finish(
            job.id,
            status=JobStatus.DONE,
            duplicate_of=previous.id,
            **{
                name: getattr(previous, name)
                for name in (
                    "answer",
                    "answer_kind",
                    "finish_reason",
                    "reasoning",
                    "ocr_text",
                    "backend",
                    "model",
                    "model_version",
                    "width",
                    "height",
                    "pages",
                    # A staff correction belongs to the content, so a renamed scan keeps it.
                    "review_status",
                    "correction",
                    "reviewed_at",
                )
            },
            prompt_tokens=0,
            completion_tokens=0,
            latency_ms=0.0,
        )
        self._claimed.discard(job.id)
        log.info("[job %s] same content as job %s: answer reused", job.uid[:8], previous.uid[:8])
        self.queue.finished(finished)
        return True

    def _fail(self, job: Job, message: Message) -> None:
        finished = self.store.finish(
            job.id,
            status=JobStatus.FAILED,
            error=str(message),
            error_code=message.code,
            backend=self.backend.name if self.backend else None,
            model=self.backend.model_id if self.backend else None,
            model_version=self.backend.model_version if self.backend else None,
        )
        self._claimed.discard(job.id)
        log.warning("[job %s] failed: %s", job.uid[:8], message)
        self.queue.finished(finished)

    def _retry_or_fail(self, job: Job, exc: TransientError) -> None:
        attempts = job.attempts  # already counted by claim()
        if attempts >= self.config.queue.max_attempts:
            self._fail(job, msg("retries_exhausted", attempts=attempts, reason=exc.message.en))
            return
        delay = min(
            self.config.queue.retry_base_seconds * 2 ** (attempts - 1), self.config.queue.retry_max_seconds
        )
        self.store.schedule_retry(job.id, utcnow() + timedelta(seconds=delay), str(exc.message), exc.code)
        self._claimed.discard(job.id)
        log.warning(
            "[job %s] attempt %d failed (%s); retry in %.0f s", job.uid[:8], attempts, exc.code, delay
        )


def _conversation(job: Job, pages: tuple[object, ...]) -> tuple[Turn, ...]:
    """Earlier turns first (the images belong to the first user turn), then the new question."""
    turns: list[Turn] = []
    for index, turn in enumerate(job.history):
        images = pages if index == 0 and turn.get("role") == "user" else ()
        turns.append(Turn(turn["role"], turn["text"], images))  # type: ignore[arg-type]
    if not turns:
        return (Turn("user", job.question, pages),)  # type: ignore[arg-type]
    turns.append(Turn("user", job.question))
    return tuple(turns)


def _join_pages(texts: list[str]) -> str:
    if len(texts) == 1:
        return texts[0]
    return "\n\n".join(f"[{msg('page_label', n=i)}]\n{t}" for i, t in enumerate(texts, start=1))
