"""The resident service: builds the spine from config, starts it, and stops it along one path.

Start order: database (migrate, re-queue jobs a crash left running) → model worker → sources → report
scheduler → HTTP. Stop order is the reverse: stop accepting, stop the report scheduler, stop sources, let the
worker finish or re-queue the job in hand, close the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import uvicorn

from db.store import Store
from service.backends.registry import create_backend
from service.config import Config
from service.messages import msg
from service.queue import JobQueue
from service.registry import build_sources
from service.sources import Notifier, Source, collect_notifiers
from service.worker import BackendFactory, ModelWorker

if TYPE_CHECKING:
    from service.reports.schedule import ReportScheduler

log = logging.getLogger("tuwen.service")

STOP_TIMEOUT_SECONDS = 30.0


class App:
    """Everything `tuwen serve` runs, wired together."""

    def __init__(
        self,
        config: Config,
        *,
        backend_factory: BackendFactory = create_backend,
        with_sources: bool = True,
        only_uids: set[str] | None = None,
        with_reports: bool | None = None,
    ) -> None:
        self.config = config
        self.started_at = time.time()
        config.storage.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.db_path)
        self.store.migrate()
        requeued = self.store.requeue_stale_running()
        if requeued:
            log.warning("re-queued %d job(s) left running by an earlier stop or crash", requeued)
        self.queue = JobQueue(self.store)
        self.worker = ModelWorker(config, self.store, self.queue, backend_factory, only_uids=only_uids)
        self.sources: list[Source] = build_sources(config, self.queue) if with_sources else []
        self._started: list[Source] = []
        # Sources that need HTTP routes (a WeCom callback, a Telegram webhook) add FastAPI routers here
        # when they are built; the HTTP app includes them. Dependencies still point inward.
        self.http_routers: list[Any] = []
        for source in self.sources:
            router = getattr(source, "http_router", None)
            if router is not None:
                self.http_routers.append(router)
        # Bots that can send unprompted, by platform, for scheduled reports (see service.sources.Notifier).
        self.notifiers: dict[str, Notifier] = collect_notifiers(self.sources)
        # Scheduled reports run in `tuwen serve` only, not in one-shot commands (`tuwen ask` has no sources).
        self.with_reports = with_sources if with_reports is None else with_reports
        self.reports: ReportScheduler | None = None  # while running

    def start(self) -> None:
        """Start the worker, then each source (a source that fails to start is logged, not fatal)."""
        self.worker.start()
        for source in self.sources:
            try:
                source.start()
                self._started.append(source)
            except Exception:
                log.exception("source %s failed to start; the rest of the service runs on", source.name)
        if self.with_reports and self.config.report:
            self._start_reports()

    def _start_reports(self) -> None:
        # Imported here: report rendering pulls in matplotlib, which a service without reports never needs.
        try:
            from service.reports.schedule import ReportScheduler

            scheduler = ReportScheduler(self.config, self.store, self.notifiers)
            scheduler.start()
        except Exception:
            log.exception("the report scheduler failed to start; the rest of the service runs on")
            return
        self.reports = scheduler

    def stop(self) -> None:
        """The one stop path."""
        self.queue.accepting = False
        if self.reports is not None:
            try:
                self.reports.stop()
            except Exception:
                log.exception("stopping the report scheduler failed")
            self.reports = None
        for source in reversed(self._started):
            try:
                source.stop()
            except Exception:
                log.exception("stopping %s failed", source.name)
        self._started.clear()
        self.worker.stop(STOP_TIMEOUT_SECONDS)
        self.store.close()
        log.info("stopped cleanly")

    async def serve_forever(self) -> None:
        """Run until SIGTERM/SIGINT: worker, sources and the HTTP server."""
        loop = asyncio.get_running_loop()
        stop_event = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_event.set)
        self.start()
        server: _Server | None = None
        server_task: asyncio.Task[None] | None = None
        if self.config.http.enabled:
            from service.http.app import create_http_app

            server = _Server(
                uvicorn.Config(
                    create_http_app(self),
                    host=self.config.http.host,
                    port=self.config.http.port,
                    log_level="warning",
                    lifespan="off",
                    # A chat stream still open at shutdown gets this long, then is cut.
                    timeout_graceful_shutdown=5,
                )
            )
            server_task = asyncio.create_task(
                _serve_http(server, self.config.http.host, self.config.http.port)
            )
            log.info("HTTP on http://%s:%d (GET /health)", self.config.http.host, self.config.http.port)
        await stop_event.wait()
        log.info("stopping: no new events are taken")
        if server is not None and server_task is not None:
            from service.http.feed import close_feeds

            close_feeds(self)  # open SSE streams would otherwise keep uvicorn waiting
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server_task, timeout=10)
        await asyncio.to_thread(self.stop)


async def _serve_http(server: uvicorn.Server, host: str, port: int) -> None:
    # uvicorn exits the process when it cannot bind; the folders and the model must keep working.
    try:
        await server.serve()
    except SystemExit:
        log.error("%s", msg("http_bind_failed", host=host, port=port))


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `App.serve_forever` owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
