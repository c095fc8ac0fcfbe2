"""The audit log and webhook deliveries over HTTP, for admins.

- GET /api/audit                   `{items, total, page, per_page}`, newest first; `?action=&actor=` filter
- GET /api/audit.csv               every matching row as CSV (UTF-8 with BOM, times in `[http] timezone`)
- GET /api/webhooks/deliveries     `{items, total, page, per_page}`, newest first (never a secret)
- GET /api/users                   `{items: [{name, role, created_at, last_login_at}]}` (accounts are changed
                                   with `tuwen users` on the server, never over HTTP)
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from db.models import AuditEntry, Role, WebhookDelivery
from db.users import UserStore
from db.webhooks import DeliveryStore
from service.csvcells import spreadsheet_cell
from service.http.auth import Scope, require
from service.http.context import HttpContext
from service.http.history_api import parse_int
from service.http.history_csv import local_time

MAX_PER_PAGE = 200
CSV_COLUMNS = ("id", "at", "actor", "role", "action", "target", "details", "address")


def audit_item(entry: AuditEntry) -> dict[str, Any]:
    """One audit row as JSON."""
    return {
        "id": entry.id,
        "at": entry.at.isoformat(),
        "actor": entry.actor,
        "role": entry.role,
        "action": entry.action,
        "target": entry.target,
        "details": entry.details or {},
        "address": entry.address,
    }


def delivery_item(row: WebhookDelivery) -> dict[str, Any]:
    """One webhook delivery as JSON (the body is left out: it can be long; the job id says what it was)."""
    return {
        "id": row.id,
        "delivery_id": row.delivery_id,
        "webhook": row.webhook,
        "url": row.url,
        "event": row.event,
        "job_id": row.job_id,
        "status": row.status,
        "status_code": row.status_code,
        "attempts": row.attempts,
        "error": row.last_error,
        "created_at": row.created_at.isoformat(),
        "next_attempt_at": row.next_attempt_at.isoformat() if row.next_attempt_at else None,
        "delivered_at": row.delivered_at.isoformat() if row.delivered_at else None,
    }


def build_router(ctx: HttpContext) -> APIRouter:
    """The admin-only audit and delivery routes."""
    router = APIRouter(dependencies=[Depends(require(ctx.auth, Scope.FULL, role=Role.ADMIN))])
    deliveries = DeliveryStore(ctx.store)
    users = UserStore(ctx.store)

    @router.get("/api/audit")
    def audit(page: str = "1", per_page: str = "50", action: str = "", actor: str = "") -> dict[str, Any]:
        """One page of the audit log, newest first."""
        number, size = parse_int("page", page, 1, 1_000_000), parse_int("per_page", per_page, 1, MAX_PER_PAGE)
        rows, total = ctx.audit.page(number, size, action=action or None, actor=actor or None)
        return {"items": [audit_item(row) for row in rows], "total": total, "page": number, "per_page": size}

    @router.get("/api/audit.csv")
    def audit_csv(action: str = "", actor: str = "") -> StreamingResponse:
        """The whole (filtered) audit log as CSV, newest first."""
        rows = ctx.audit.every(action=action or None, actor=actor or None)
        headers = {"Content-Disposition": 'attachment; filename="tuwen-audit.csv"'}
        chunks = _csv_chunks(rows, ZoneInfo(ctx.config.http.timezone))
        return StreamingResponse(chunks, media_type="text/csv; charset=utf-8", headers=headers)

    @router.get("/api/webhooks/deliveries")
    def webhook_deliveries(page: str = "1", per_page: str = "50") -> dict[str, Any]:
        """One page of webhook deliveries, newest first."""
        number, size = parse_int("page", page, 1, 1_000_000), parse_int("per_page", per_page, 1, MAX_PER_PAGE)
        rows, total = deliveries.page(number, size)
        return {
            "items": [delivery_item(row) for row in rows],
            "total": total,
            "page": number,
            "per_page": size,
        }

    @router.get("/api/users")
    def list_users() -> dict[str, Any]:
        """Every account (never a password hash)."""
        return {
            "items": [
                {
                    "name": user.name,
                    "role": user.role,
                    "created_at": user.created_at.isoformat(),
                    "last_login_at": user.last_login_at.isoformat() if user.last_login_at else None,
                }
                for user in users.all()
            ]
        }

    return router


def _csv_chunks(rows: Iterator[AuditEntry], tz: ZoneInfo) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    buffer.write("\ufeff")
    writer.writerow(CSV_COLUMNS)
    for count, entry in enumerate(rows, start=1):
        details = json.dumps(entry.details or {}, ensure_ascii=False, sort_keys=True)
        values = (entry.id, local_time(entry.at, tz), entry.actor, entry.role, entry.action, entry.target)
        writer.writerow([spreadsheet_cell(v) for v in (*values, details, entry.address)])
        if count % 200 == 0:
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode("utf-8")
