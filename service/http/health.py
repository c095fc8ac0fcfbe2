"""What `/health` says: the worker, every source, and the database, each with its state.

Healthy (200) only when the model worker can answer, every configured source is doing its job, at least
one model server answers (a remote backend lists each of its servers), and the database can be written.
Anything else is 503 with the reason, so a load balancer, compose's health check or a person at the
dashboard learns that scans are no longer being read, instead of a green light over a stopped watcher (the
worst kind of failure for staff: nothing tells them).
"""

from __future__ import annotations

import time
from typing import Any

from service import __version__
from service.http.context import HttpContext


def health_report(app: HttpContext) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for `GET /health`."""
    worker = app.worker
    components = app.components()
    storage = app.store.health
    try:
        depth, counts = app.store.queue_depth(), app.store.status_counts()
        readable = True
    except Exception:  # the report must answer even when the database cannot be read
        depth, counts, readable = {}, {}, False
    sources_up = all(c.up for c in components if c.kind not in ("worker", "model-endpoint"))
    # Several model servers: one down is shown, but the service still answers while another is up.
    endpoints = [c for c in components if c.kind == "model-endpoint"]
    endpoints_up = not endpoints or any(c.up for c in endpoints)
    healthy = worker.alive and sources_up and endpoints_up and storage.available and readable
    body: dict[str, Any] = {
        "status": "healthy" if healthy else "unhealthy",
        "version": __version__,
        "uptime_seconds": round(time.time() - app.started_at, 1),
        "backend": app.config.model.backend,
        "model": worker.backend.model_id if worker.backend else None,
        "model_version": worker.backend.model_version if worker.backend else None,
        "model_state": worker.state,
        "queue_depth": sum(depth.values()),
        "queue_by_priority": {str(k): v for k, v in sorted(depth.items())},
        "jobs": counts,
        "components": [c.as_dict() for c in components],
        "storage": {"state": "ok" if storage.available and readable else (storage.code or "unreadable")},
    }
    if not storage.available:
        body["storage"]["error"] = storage.reason
    try:
        body["backlog_paused"] = app.backlog.paused()
    except Exception:  # like the counts: /health answers even when the database cannot be read
        body["backlog_paused"] = None
    if worker.stuck_jobs:
        body["stuck_jobs"] = list(worker.stuck_jobs)
    if worker.error is not None:
        body["error"] = str(worker.error)
    down = [c for c in components if not c.up and (c.kind != "model-endpoint" or not endpoints_up)]
    if down and "error" not in body:
        first = down[0]
        body["error"] = f"{first.name}: {first.state}" + (f" ({first.error})" if first.error else "")
    return (200 if healthy else 503), body
