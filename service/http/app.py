"""The FastAPI application. For now: `GET /health`; the API, web UI and kiosk plug in here later."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from service import __version__

if TYPE_CHECKING:
    from service.app import App


def create_http_app(app: App) -> FastAPI:
    """Build the ASGI app bound to a running `App`."""
    api = FastAPI(title="tuwen 图问", version=__version__)

    @api.get("/health")
    def health() -> JSONResponse:
        """200 when the model worker can answer, 503 otherwise (loading, failed, dead); no key needed."""
        worker = app.worker
        healthy = worker.alive
        depth = app.store.queue_depth()
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
            "jobs": app.store.status_counts(),
        }
        if worker.error is not None:
            body["error"] = str(worker.error)
        return JSONResponse(body, status_code=200 if healthy else 503)

    return api
