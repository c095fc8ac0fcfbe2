"""Webhooks: a signed JSON POST to every `[[webhook]]` for each job event it asked for.

Events: `job.done` and `job.failed` when a job is recorded, `job.reviewed` when a person's verdict is
recorded (or a correction is carried onto a re-run that was already answered). The body is
`{"event", "delivery_id", "created_at", "job": {...}}`; the headers are `X-Tuwen-Event`,
`X-Tuwen-Delivery` and `X-Tuwen-Signature: sha256=<hex HMAC-SHA256 of the body with the webhook's secret>`,
so a receiver recomputes the HMAC over the raw bytes it received and compares in constant time.

Nothing here runs on the worker: the queue's listeners only put the event on an in-memory queue; one thread
of its own writes the delivery row (`db/webhooks.py`, the exact body), sends it, and retries a failure
(a non-2xx answer, a refused connection, a timeout) with `service.retry.Backoff` until `max_attempts`,
recording every attempt. Pending rows left by a stop are sent again at the next start. One thread sends
to every receiver in turn, so a receiver that times out delays the others by up to its `timeout_seconds`
per attempt, never the worker. Only `tuwen serve` sends (`service/app.py` wires it to the queue). The
secrets are registered with `service.redact` (the CLI does), and only the signature leaves the process.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import logging
import queue
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from db.models import Job, ReviewStatus, WebhookDelivery
from db.store import Store
from db.webhooks import DeliveryStore
from service.config_webhooks import WebhookConfig
from service.redact import scrub
from service.retry import Backoff

log = logging.getLogger(f"tuwen.{__name__}")

RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = 600.0
MAX_ERROR_CHARS = 500


def signature(body: bytes, secret: str) -> str:
    """The `X-Tuwen-Signature` value for `body`."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def job_payload(job: Job) -> dict[str, Any]:
    """What a webhook is told about a job."""
    return {
        "id": job.id,
        "uid": job.uid,
        "source": job.source,
        "source_ref": job.source_ref,
        "status": job.status,
        "file_path": job.file_path,
        "question": job.question,
        "answer": job.answer,
        "error_code": job.error_code,
        "review_status": job.review_status or ReviewStatus.UNREVIEWED,
        "correction": job.correction,
        "reviewed_by": job.reviewed_by,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


class WebhookSender:
    """Owns the delivery thread; `on_finished` / `on_updated` are the queue's listeners."""

    def __init__(self, hooks: list[WebhookConfig], store: Store) -> None:
        self.hooks = hooks
        self.deliveries = DeliveryStore(store)
        self._events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._due: list[tuple[float, int, int]] = []  # (monotonic due time, row id, hook index)
        self._backoffs: dict[int, Backoff] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- listeners (on the worker's or a request's thread: only a put) ----------------------------------

    def on_finished(self, job: Job) -> None:
        """A job was recorded done or failed."""
        self._events.put(("job.done" if job.status == "done" else "job.failed", job_payload(job)))

    def on_updated(self, job: Job) -> None:
        """A finished job changed: a review was recorded."""
        if (job.review_status or ReviewStatus.UNREVIEWED) != ReviewStatus.UNREVIEWED:
            self._events.put(("job.reviewed", job_payload(job)))

    # -- the thread ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Resume pending deliveries and start sending."""
        by_key = {hook.key: index for index, hook in enumerate(self.hooks)}
        for row in self.deliveries.pending():
            if row.webhook in by_key:
                heapq.heappush(self._due, (time.monotonic(), row.id, by_key[row.webhook]))
        self._thread = threading.Thread(target=self._run, name="tuwen-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending; what is pending stays in the database for the next start."""
        self._stop.set()
        self._events.put(("", {}))  # wake the thread
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        with httpx.Client(follow_redirects=False) as client:
            while not self._stop.is_set():
                self._take_events(self._wait_seconds())
                now = time.monotonic()
                while self._due and self._due[0][0] <= now and not self._stop.is_set():
                    _, row_id, index = heapq.heappop(self._due)
                    try:
                        self._attempt(client, row_id, self.hooks[index], index)
                    except Exception:  # the database is down, say: try this one again later
                        log.exception("webhook delivery %d could not be recorded", row_id)
                        heapq.heappush(self._due, (now + RETRY_BASE_SECONDS * 5, row_id, index))
            # Stopping: events not yet written become pending rows, sent at the next start.
            try:
                self._take_events(0)
            except Exception:
                log.exception("webhook events could not be kept for the next start")

    def _wait_seconds(self) -> float:
        if not self._due:
            return 1.0
        return max(0.0, min(1.0, self._due[0][0] - time.monotonic()))

    def _take_events(self, wait: float) -> None:
        try:
            event, payload = self._events.get(timeout=wait) if wait > 0 else self._events.get_nowait()
        except queue.Empty:
            return
        while True:
            if event:
                self._enqueue(event, payload)
            try:
                event, payload = self._events.get_nowait()
            except queue.Empty:
                return

    def _enqueue(self, event: str, payload: dict[str, Any]) -> None:
        for index, hook in enumerate(self.hooks):
            if event not in hook.events:
                continue
            delivery_id = secrets.token_hex(16)
            created = datetime.now(UTC).isoformat(timespec="seconds")
            body = {"event": event, "delivery_id": delivery_id, "created_at": created, "job": payload}
            text = json.dumps(body, ensure_ascii=False, sort_keys=True)
            row = self.deliveries.create(hook.key, hook.url, event, payload.get("id"), text, delivery_id)
            heapq.heappush(self._due, (time.monotonic(), row.id, index))

    def _attempt(self, client: httpx.Client, row_id: int, hook: WebhookConfig, index: int) -> None:
        row = self.deliveries.get(row_id)
        if row is None:
            return
        status_code, error = _send(client, row, hook)
        delivered = status_code is not None and 200 <= status_code < 300
        backoff = self._backoffs.setdefault(row_id, Backoff(base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS))
        next_at: datetime | None = None
        if not delivered and row.attempts + 1 < hook.max_attempts:
            delay = backoff.next_delay()
            next_at = datetime.now(UTC) + timedelta(seconds=delay)
            heapq.heappush(self._due, (time.monotonic() + delay, row_id, index))
        else:
            self._backoffs.pop(row_id, None)
        self.deliveries.attempted(
            row_id, status_code=status_code, error=error, delivered=delivered, next_attempt_at=next_at
        )
        if not delivered:
            log.warning("webhook %s: %s delivery %s failed: %s", hook.key, row.event, row.delivery_id, error)


def _send(client: httpx.Client, row: WebhookDelivery, hook: WebhookConfig) -> tuple[int | None, str | None]:
    body = row.body.encode("utf-8")
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "tuwen-webhook",
        "X-Tuwen-Event": row.event,
        "X-Tuwen-Delivery": row.delivery_id,
        "X-Tuwen-Signature": signature(body, hook.secret.get_secret_value()),
    }
    try:
        answer = client.post(hook.url, content=body, headers=headers, timeout=hook.timeout_seconds)
    except httpx.HTTPError as exc:
        return None, scrub(f"{type(exc).__name__}: {exc}")[:MAX_ERROR_CHARS]
    if 200 <= answer.status_code < 300:
        return answer.status_code, None
    return answer.status_code, f"HTTP {answer.status_code}"
