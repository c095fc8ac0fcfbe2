"""The FastAPI application: one router per concern, all bound to the running `App`.

- `health`     GET /health (here: it must never depend on anything else working)
- `metrics`    GET /metrics (Prometheus)
- `openai_api` POST /v1/chat/completions, GET /v1/models
- `history_api` /api/… JSON for history, review, export, thumbnails
- `pages`      /, /login, /kiosk, /feed and their static files; /api/feed/events (SSE)
- `reports_api` GET /api/reports and /reports/NAME/STAMP/FILE (the written reports)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from service import __version__
from service.health import health_report
from service.http import history_api, metrics, openai_api, pages, reports_api
from service.http.auth import Auth
from service.http.context import HttpContext
from service.http.errors import install_error_handlers

if TYPE_CHECKING:
    from service.app import App


def create_http_app(app: App) -> FastAPI:
    """Build the ASGI app bound to a running `App`."""
    api = FastAPI(title="tuwen 图问", version=__version__)
    ctx = HttpContext(app=app, auth=Auth(app.config.http.api_key.get_secret_value()))
    ctx.metrics = metrics.Metrics(ctx)
    install_error_handlers(api)

    @api.get("/health")
    def health() -> JSONResponse:
        """200 when the worker, every source and the database work; 503 otherwise, with why. No key needed."""
        status, body = health_report(app)
        return JSONResponse(body, status_code=status)

    api.include_router(metrics.build_router(ctx))
    api.include_router(openai_api.build_router(ctx))
    api.include_router(history_api.build_router(ctx))
    api.include_router(pages.build_router(ctx))
    api.include_router(reports_api.build_router(ctx))
    for router in app.http_routers:  # adapters' callback routes (WeCom, Telegram webhook)
        api.include_router(router)
    return api
