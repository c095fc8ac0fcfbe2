"""What every HTTP module gets: the spine's collaborators, handed in (Frigate's `create_app(config, db, …)`,
vLLM's `app.state`), never the whole application object.

Nothing under `service/http/` imports `service/app.py`: the routers see the config, the store and the queue,
the worker's state, the components' states for /health, the report scheduler's view for the Reports tab, and
the auth checker; the composition root (`service.app`) fills this in once per HTTP app.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from db.store import Store
from service.config import Config
from service.http.auth import Auth
from service.queue import JobQueue
from service.supervisor import ComponentStatus

if TYPE_CHECKING:
    from db.audit import AuditLog
    from service.backlog import BacklogPause
    from service.http.feed import FeedHub
    from service.http.metrics import Metrics
    from service.reports.schedule import ReportScheduler
    from service.worker import ModelWorker


@dataclass
class HttpContext:
    """Shared by the routers; built once per `create_http_app`."""

    config: Config
    store: Store
    queue: JobQueue
    worker: ModelWorker
    auth: Auth
    started_at: float
    # The worker's and every source's state (for /health and /metrics), read when asked.
    components: Callable[[], list[ComponentStatus]]
    # The running report scheduler, if any (the Reports tab shows its next runs).
    report_scheduler: Callable[[], ReportScheduler | None] = lambda: None
    # Routes that sources contribute (a WeCom callback, a Telegram webhook).
    routers: list[Any] = field(default_factory=list)
    metrics: Metrics = field(init=False)
    feed: FeedHub = field(init=False)
    # The backlog pause and the audit log (set by `create_http_app`).
    backlog: BacklogPause = field(init=False)
    audit: AuditLog = field(init=False)

    @property
    def reports(self) -> ReportScheduler | None:
        """The running report scheduler, or None."""
        return self.report_scheduler()
