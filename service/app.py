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
import socket
import time
from typing import TYPE_CHECKING, Any

from service.backends.registry import create_backend
from service.config import Config
from service.errors import StartupError
from service.http.server import AcceptErrorThrottle, QuietServer, uvicorn_config
from service.messages import msg
from service.nodes import NodeHeartbeat, requeue_orphans
from service.queue import JobQueue
from service.registry import build_sources
from service.retention import RetentionSweeper
from service.sources import Notifier, Source, collect_notifiers
from service.storage import open_store
from service.supervisor import ComponentStatus
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
        self.store = open_store(config)  # StartupError with a plain message when it cannot be used
        requeued = requeue_orphans(self.store, config.node.lease_seconds, config.node.name)
        if requeued:
            log.warning("re-queued %d job(s) left running by an earlier stop or crash", requeued)
        self.queue = JobQueue(self.store)
        self.worker = ModelWorker(
            config, self.store, self.queue, backend_factory, only_uids=only_uids, node=config.node.name
        )
        # Only the resident service is a node: a one-shot CLI run hands its jobs to one instead.
        self.heartbeat = (
            NodeHeartbeat(self.store, config.node.name, config.model.backend, config.node.heartbeat_seconds)
            if with_sources
            else None
        )
        self.sources: list[Source] = build_sources(config, self.queue) if with_sources else []
        self.retention = (
            RetentionSweeper(config.storage.data_dir, config.storage.keep_uploads_days)
            if with_sources
            else None
        )
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
        if self.heartbeat is not None:
            self.heartbeat.register()
            self.heartbeat.start()
        self.worker.start()
        for source in self.sources:
            try:
                source.start()
                self._started.append(source)
            except Exception:
                log.exception("source %s failed to start; the rest of the service runs on", source.name)
        if self.with_reports and self.config.report:
            self._start_reports()
        if self.retention is not None:
            self.retention.start()

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
        if self.retention is not None:
            self.retention.stop()
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
        if self.heartbeat is not None:
            self.heartbeat.stop()
        self.store.close()
        log.info("stopped cleanly")

    def components(self) -> list[ComponentStatus]:
        """The state of the worker and of every source, as `/health` and `/metrics` show them."""
        found = [self.worker.status()]
        for source in self.sources:
            status = getattr(source, "status", None)
            if callable(status):
                found.append(status())
        return found

    async def serve_forever(self) -> int:
        """Run until SIGTERM/SIGINT: worker, sources and the HTTP server. Returns the exit status.

        The port is bound before anything starts: a port in use is a configuration problem, and a service
        running without its web server (no /health, no API) would look alive to nobody. It exits 1 with a
        plain message instead, so systemd or compose restart it once the port is free.
        """
        loop = asyncio.get_running_loop()
        stop_event = asyncio.Event()
        http = self.config.http
        sock = bind_socket(http.host, http.port) if http.enabled else None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_event.set)
        loop.set_exception_handler(AcceptErrorThrottle())
        self.start()
        server: QuietServer | None = None
        server_task: asyncio.Task[None] | None = None
        if sock is not None:
            from service.http.app import create_http_app

            server = QuietServer(uvicorn_config(create_http_app(self), self.config))
            server_task = asyncio.create_task(server.serve(sockets=[sock]))
            log.info("HTTP on http://%s:%d (GET /health)", http.host, sock.getsockname()[1])
        await stop_event.wait()
        log.info("stopping: no new events are taken")
        if server is not None and server_task is not None:
            from service.http.feed import close_feeds

            close_feeds(self)  # open SSE streams would otherwise keep uvicorn waiting
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server_task, timeout=10)
        await asyncio.to_thread(self.stop)
        return 0


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket for `[http]`; `StartupError` with a plain message when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise StartupError(msg("http_bind_failed", host=host, port=port, reason=exc.strerror or exc)) from exc
    sock.set_inheritable(True)
    return sock
