"""Prometheus metrics at `GET /metrics` (FULL scope when a key is set).

Each `Metrics` has its own `CollectorRegistry` rather than prometheus-client's global one: tests (and the
CLI beside a running service) build several apps in one process, and the global registry refuses a second
metric of the same name.

What is measured, and where it comes from:
- `tuwen_requests_total{source,status}`: chat API calls by source label (api/web/kiosk) and HTTP status
  (a stream counts its 200 when it starts; a failure after that is counted as a rejection only).
- `tuwen_rejections_total{reason}`: calls refused before an answer (unauthorized, queue_full, too_large,
  model_unavailable, invalid_request, bad_image, job_failed, timeout).
- `tuwen_jobs_finished_total{source,status}`, `tuwen_job_latency_seconds{source}` (created → finished, so
  queueing is included), `tuwen_generated_tokens_total{source}` and `tuwen_tokens_per_second` (completion
  tokens over the worker's processing time): from the queue's finished-job listener, so every job counts,
  folder and bot jobs too. Answers reused from a duplicate generated nothing and are left out of the token
  figures.
- `tuwen_time_to_first_token_seconds{source}`: API jobs, submit → first streamed piece.
- Read at scrape time: `tuwen_queue_depth{priority}`, `tuwen_worker_up`, and `tuwen_gpu_memory_used_bytes
  {device}` (bytes held by torch's CUDA caching allocator) only when torch is already imported and CUDA is
  initialised: importing torch costs seconds and memory, and touching CUDA would create a context.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from db.models import Job, JobStatus
from service import __version__
from service.events import Priority
from service.http.auth import Scope, require
from service.http.context import HttpContext
from service.http.errors import ApiError

log = logging.getLogger(f"tuwen.{__name__}")

# Seconds: an interactive answer takes ~0.1 s (OCR, tiny models) to minutes (long answers on a small GPU).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
TOKENS_PER_SECOND_BUCKETS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 5000)
# Why a request was refused, by HTTP status, when the caller does not say more precisely.
REASONS = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    413: "too_large",
    422: "bad_image",
    429: "queue_full",
    503: "model_unavailable",
    504: "timeout",
}


class Metrics:
    """The service's metrics; built once per HTTP app, fed by the routers and the queue."""

    def __init__(self, ctx: HttpContext) -> None:
        self.ctx = ctx
        # The `*_created` timestamp series double the output and no dashboard of ours reads them.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "tuwen_requests", "API calls by source and HTTP status", ["source", "status"], registry=registry
        )
        self.rejections = Counter(
            "tuwen_rejections", "Refused API calls by reason", ["reason"], registry=registry
        )
        self.jobs_finished = Counter(
            "tuwen_jobs_finished",
            "Jobs finished, by source and status",
            ["source", "status"],
            registry=registry,
        )
        self.job_latency = Histogram(
            "tuwen_job_latency_seconds",
            "Job time from submit to finish (queueing included)",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.first_token = Histogram(
            "tuwen_time_to_first_token_seconds",
            "API jobs: time from submit to the first piece of the answer",
            ["source"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        self.generated_tokens = Counter(
            "tuwen_generated_tokens", "Completion tokens generated", ["source"], registry=registry
        )
        self.tokens_per_second = Histogram(
            "tuwen_tokens_per_second",
            "Completion tokens per second of the worker's processing time, per generated answer",
            buckets=TOKENS_PER_SECOND_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "tuwen_job_queue_wait_seconds",
            "Job time from submit until the worker took it",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            "tuwen_job_inference_seconds",
            "Job time in the worker: decoding, the model and recording",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # CPU, resident memory and open file descriptors of this process (Linux /proc).
        ProcessCollector(registry=registry)
        build = Gauge(
            "tuwen_build_info",
            "Always 1; the labels say what runs",
            ["version", "backend", "python"],
            registry=registry,
        )
        python = ".".join(str(part) for part in sys.version_info[:3])
        build.labels(__version__, ctx.config.model.backend, python).set(1)
        registry.register(_ScrapeTimeCollector(ctx))
        ctx.queue.add_finished_listener(self.job_finished)

    def request(self, source: str, status: int) -> None:
        """Count one API call with its final HTTP status."""
        self.requests.labels(source, str(status)).inc()

    def rejected(self, status: int, reason: str | None = None) -> None:
        """Count one refused call; `reason` defaults to the status's usual reason."""
        self.rejections.labels(reason or REASONS.get(status, str(status))).inc()

    def first_piece(self, source: str, seconds: float) -> None:
        """Record the time from submit to the first piece of an API answer."""
        self.first_token.labels(source).observe(max(0.0, seconds))

    def job_finished(self, job: Job) -> None:
        """The queue's finished-job listener (runs on the worker thread; prometheus-client is thread-safe)."""
        self.jobs_finished.labels(job.source, job.status).inc()
        if job.created_at is not None and job.finished_at is not None:
            seconds = (job.finished_at - job.created_at).total_seconds()
            self.job_latency.labels(job.source).observe(max(0.0, seconds))
        if job.created_at is not None and job.started_at is not None:
            waited = (job.started_at - job.created_at).total_seconds()
            self.queue_wait.labels(job.source).observe(max(0.0, waited))
        if job.latency_ms and job.duplicate_of is None:
            self.inference.labels(job.source).observe(job.latency_ms / 1000)
        tokens = job.completion_tokens or 0
        # Only real generation: OCR "tokens" are characters, and a reused answer generated nothing.
        generated = job.answer_kind == "model" and job.duplicate_of is None
        if job.status == JobStatus.DONE and tokens > 0 and generated:
            self.generated_tokens.labels(job.source).inc(tokens)
            if job.latency_ms:
                self.tokens_per_second.observe(tokens / (job.latency_ms / 1000))

    def require(
        self, *scopes: Scope, source_of: Callable[[Request], str] | None = None
    ) -> Callable[[Request], None]:
        """Like `auth.require`, and a refused call is counted as a rejection (`unauthorized`) and, with
        `source_of`, as a request of that source."""
        check = require(self.ctx.auth, *scopes)

        def dependency(request: Request) -> None:
            try:
                check(request)
            except ApiError as exc:
                self.rejected(exc.status)
                if source_of is not None:
                    self.request(source_of(request), exc.status)
                raise

        return dependency

    def exposition(self) -> bytes:
        """The text format of every metric."""
        return generate_latest(self.registry)


class _ScrapeTimeCollector(Collector):
    """Values read when scraped rather than kept up to date: queue depth, worker state, GPU memory."""

    def __init__(self, ctx: HttpContext) -> None:
        self.ctx = ctx

    def describe(self) -> Iterable[Any]:
        # Empty: otherwise the registry calls collect() at registration, before the database is needed.
        return []

    def collect(self) -> Iterable[Any]:
        app = self.ctx
        depth = GaugeMetricFamily("tuwen_queue_depth", "Queued jobs by priority", labels=["priority"])
        counts = app.store.queue_depth()
        for priority in Priority:
            depth.add_metric([priority.name.lower()], counts.pop(int(priority), 0))
        for number, count in sorted(counts.items()):  # priorities outside the enum, should any appear
            depth.add_metric([str(number)], count)
        yield depth
        yield GaugeMetricFamily(
            "tuwen_worker_up", "1 when the model worker can answer", value=1 if app.worker.alive else 0
        )
        yield GaugeMetricFamily(
            "tuwen_interactive_slots_in_use",
            "Interactive requests waiting or being admitted (at [http] max_queue new ones get 429)",
            value=app.queue.slots_in_use(),
        )
        up = GaugeMetricFamily(
            "tuwen_source_up",
            "1 when a component (watch, bot, worker, model server) is doing its job",
            labels=["name", "kind"],
        )
        restarts = CounterMetricFamily(
            "tuwen_source_restarts",
            "Restarts of a component after a crash or a stuck job",
            labels=["name", "kind"],
        )
        for status in app.components():
            up.add_metric([status.name, status.kind], 1 if status.up else 0)
            restarts.add_metric([status.name, status.kind], status.restarts)
        yield up
        yield restarts
        endpoints = getattr(app.worker.backend, "endpoints", None)
        if endpoints is not None:  # a remote backend: requests in flight per server
            in_flight = GaugeMetricFamily(
                "tuwen_endpoint_in_flight", "Requests in flight per model server", labels=["url"]
            )
            for url, count in endpoints.in_flight().items():
                in_flight.add_metric([url], count)
            yield in_flight
        yield GaugeMetricFamily(
            "tuwen_storage_up",
            "1 when the database can be written",
            value=1 if app.store.health.available else 0,
        )
        if (gpu := _gpu_memory()) is not None:
            yield gpu


def _gpu_memory() -> GaugeMetricFamily | None:
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return None
        family = GaugeMetricFamily(
            "tuwen_gpu_memory_used_bytes", "GPU memory held by this process's tensors", labels=["device"]
        )
        for index in range(torch.cuda.device_count()):
            family.add_metric([str(index)], float(torch.cuda.memory_reserved(index)))
        return family
    except Exception:  # a broken driver must not break the scrape
        log.debug("reading GPU memory failed", exc_info=True)
        return None


def build_router(ctx: HttpContext) -> APIRouter:
    """`GET /metrics` in Prometheus's text format."""
    router = APIRouter()
    metrics: Metrics = ctx.metrics

    @router.get("/metrics", dependencies=[Depends(metrics.require(Scope.FULL))])
    def scrape() -> Response:
        """Every metric, for Prometheus (FULL scope when a key is set)."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return router
