"""The resident service: starts what `service.composition` built and stops it along one path.

Start order: node heartbeat → model worker → sources → report scheduler and upload clean-up → HTTP (the port
is bound before anything starts). Stop order is the reverse: stop accepting, stop the clean-up and the report
scheduler, stop sources in reverse start order, let the worker finish or re-queue the job in hand, mark the
node stopped, close the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from db.sessions import SessionStore
from db.store import Store
from db.users import UserStore
from service.config import Config
from service.errors import StartupError
from service.http.auth import Auth
from service.http.context import HttpContext
from service.http.server import AcceptErrorThrottle, QuietServer, uvicorn_config
from service.messages import msg
from service.nodes import NodeHeartbeat
from service.queue import JobQueue
from service.retention import RetentionSweeper
from service.sources import Notifier, Source, collect_notifiers
from service.supervisor import ComponentStatus
from service.webhooks import WebhookSender
from service.worker import ModelWorker

if TYPE_CHECKING:
    from service.reports.schedule import ReportScheduler

log = logging.getLogger(f"tuwen.{__name__}")

STOP_TIMEOUT_SECONDS = 30.0


@dataclass
class Spine:
    """The service's own parts, built by `service.composition.build_service`."""

    store: Store
    queue: JobQueue
    worker: ModelWorker
    heartbeat: NodeHeartbeat
    retention: RetentionSweeper


class App:
    """Everything `tuwen serve` runs: the spine, the sources and the HTTP server, started and stopped.

    Built by `service.composition.build_service`, which is the only spine module that knows adapters exist:
    this class is handed the sources and never imports `watchers/` or `bots/`.
    """

    def __init__(self, config: Config, spine: Spine, sources: list[Source]) -> None:
        self.config = config
        self.started_at = time.time()
        self.store = spine.store
        self.queue = spine.queue
        self.worker = spine.worker
        self.heartbeat = spine.heartbeat
        self.retention = spine.retention
        self.sources = sources
        self._started: list[Source] = []
        # Sources that need HTTP routes (a WeCom callback, a Telegram webhook) add FastAPI routers; the
        # HTTP app includes them. Dependencies still point inward.
        routers = (getattr(source, "http_router", None) for source in sources)
        self.http_routers: list[Any] = [router for router in routers if router is not None]
        # Bots that can send unprompted, by platform, for scheduled reports (see service.sources.Notifier).
        self.notifiers: dict[str, Notifier] = collect_notifiers(self.sources)
        self.reports: ReportScheduler | None = None  # while running
        # Job events POSTed to each [[webhook]] from a thread of its own (never the worker's).
        self.webhooks = WebhookSender(config.webhook, self.store) if config.webhook else None
        if self.webhooks is not None:
            self.queue.add_finished_listener(self.webhooks.on_finished)
            self.queue.add_updated_listener(self.webhooks.on_updated)
        self._http: HttpContext | None = None

    def http_context(self) -> HttpContext:
        """The collaborators the HTTP layer gets (built once)."""
        if self._http is None:
            http = self.config.http
            sessions = SessionStore(self.store)
            users = UserStore(self.store)
            auth = Auth(
                http.api_key.get_secret_value(), sessions, session_hours=http.session_hours, users=users
            )
            self._http = HttpContext(
                config=self.config,
                store=self.store,
                queue=self.queue,
                worker=self.worker,
                auth=auth,
                started_at=self.started_at,
                components=self.components,
                report_scheduler=lambda: self.reports,
                routers=self.http_routers,
            )
        return self._http

    def start(self) -> None:
        """Start the worker, then each source (a source that fails to start is logged, not fatal)."""
        self.heartbeat.register()
        self.heartbeat.start()
        self.worker.start()
        for source in self.sources:
            try:
                source.start()
                self._started.append(source)
            except Exception:
                log.exception("source %s failed to start; the rest of the service runs on", source.name)
        if self.config.report:
            self._start_reports()
        self.retention.start()
        if self.webhooks is not None:
            self.webhooks.start()

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
        if self.webhooks is not None:
            self.webhooks.stop()  # after the worker: the last answers' events are queued, pending rows kept
        self.heartbeat.stop()
        self.store.close()
        log.info("stopped cleanly")

    def components(self) -> list[ComponentStatus]:
        """The state of the worker and of every source, as `/health` and `/metrics` show them."""
        found = [self.worker.status()]
        endpoints = getattr(self.worker.backend, "endpoint_statuses", None)
        if callable(endpoints):  # a remote backend: each server it sends to
            found.extend(endpoints())
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

            server = QuietServer(uvicorn_config(create_http_app(self.http_context()), self.config))
            server_task = asyncio.create_task(server.serve(sockets=[sock]))
            log.info("HTTP on http://%s:%d (GET /health)", http.host, sock.getsockname()[1])
        await stop_event.wait()
        log.info("stopping: no new events are taken")
        if server is not None and server_task is not None:
            from service.http.feed import close_feeds

            close_feeds(self.http_context())  # open SSE streams would otherwise keep uvicorn waiting
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
