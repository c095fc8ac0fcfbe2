"""The FastAPI application: one router per concern, all given the same `HttpContext`.

- `health`     GET /health (here: it must never depend on anything else working)
- `metrics`    GET /metrics (Prometheus)
- `openai_api` POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id}
- `history_api` /api/jobs… JSON for history, search, export, thumbnails
- `review_api` /api/jobs/{id}/review, /api/review/… (staff review)
- `pages`      /, /kiosk, /feed and their static files; /api/feed/events (SSE)
- `login`      /login, /logout (server-side sessions)
- `reports_api` GET /api/reports and /reports/NAME/STAMP/FILE (the written reports)
- `ops_api`    GET /api/me, /api/watches; re-runs; POST /api/backlog/pause|resume (admin)
- `audit_api`  GET /api/audit, /api/audit.csv, /api/webhooks/deliveries, /api/users (admin)
- GET /openapi.json (here: it describes the whole app) behind the key, with the pages' security headers.
  FastAPI's /docs and /redoc pages are off: they load Swagger UI and ReDoc from a third-party CDN, so a
  stranger's script would run on a page of ours while a key sits in it, and a museum LAN may not reach the
  CDN anyway. Any OpenAPI viewer can read the JSON.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from db.audit import AuditLog
from service import __version__
from service.http import (
    audit_api,
    history_api,
    login,
    metrics,
    openai_api,
    ops_api,
    pages,
    reports_api,
    review_api,
)
from service.http.auth import Scope, require
from service.http.context import HttpContext
from service.http.errors import install_error_handlers
from service.http.health import health_report
from service.http.middleware import install_middleware


def create_http_app(ctx: HttpContext) -> FastAPI:
    """Build the ASGI app on the service's collaborators."""
    api = FastAPI(title="tuwen 图问", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    install_middleware(api, ctx.config.http)
    ctx.metrics = metrics.Metrics(ctx)
    ctx.backlog = ctx.worker.backlog  # the worker's own: a pause here is seen by its next claim
    ctx.audit = AuditLog(ctx.store)
    install_error_handlers(api)

    @api.get("/health")
    def health() -> JSONResponse:
        """200 when the worker, every source and the database work; 503 otherwise, with why. No key needed."""
        status, body = health_report(ctx)
        return JSONResponse(body, status_code=status)

    api.include_router(metrics.build_router(ctx))
    api.include_router(openai_api.build_router(ctx))
    api.include_router(history_api.build_router(ctx))
    api.include_router(review_api.build_router(ctx))
    api.include_router(pages.build_router(ctx))
    api.include_router(login.build_router(ctx))
    api.include_router(reports_api.build_router(ctx))
    api.include_router(ops_api.build_router(ctx))
    api.include_router(audit_api.build_router(ctx))
    for router in ctx.routers:  # adapters' callback routes (WeCom, Telegram webhook)
        api.include_router(router)

    @api.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require(ctx.auth, Scope.FULL))])
    def openapi() -> JSONResponse:
        """The OpenAPI description of every route (FULL scope when a key is set)."""
        return JSONResponse(api.openapi(), headers=pages.PAGE_HEADERS)

    return api
