"""The audit log (`audit`): who did what, when, to what, through the store's single writer.

One row per staff action that changes something: a review or correction, a re-run, pausing or resuming the
backlog, an account change, and a login name or address locked out by the throttle. `actor` is the account
name, `api-key` (the `[http] api_key`, as a Bearer header or a key login), `cli:<os user>` (`tuwen users …`)
or `anonymous` (a service without key or accounts). `details` never holds a password or a key.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import Select, func, select

from db.models import AuditEntry
from db.store import Store

_BATCH_ROWS = 500


class Action:
    """What an audit row records."""

    JOB_REVIEW = "job.review"
    JOB_RERUN = "job.rerun"
    WATCH_RERUN = "watch.rerun"
    BACKLOG_PAUSE = "backlog.pause"
    BACKLOG_RESUME = "backlog.resume"
    USER_ADD = "user.add"
    USER_PASSWORD = "user.password"
    USER_ROLE = "user.role"
    USER_REMOVE = "user.remove"
    LOGIN_LOCKED = "login.locked"
    ALL = (
        JOB_REVIEW,
        JOB_RERUN,
        WATCH_RERUN,
        BACKLOG_PAUSE,
        BACKLOG_RESUME,
        USER_ADD,
        USER_PASSWORD,
        USER_ROLE,
        USER_REMOVE,
        LOGIN_LOCKED,
    )


class AuditLog:
    """Append to and read the audit log."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def record(
        self,
        actor: str,
        action: str,
        target: str = "",
        details: dict[str, Any] | None = None,
        *,
        role: str | None = None,
        address: str = "",
    ) -> AuditEntry:
        """Append one row and return it."""
        entry = AuditEntry(
            actor=actor[:128],
            role=role,
            action=action,
            target=target[:512],
            details=details or None,
            address=address[:64],
        )
        with self.store.write_session() as session:
            session.add(entry)
            session.flush()
            return entry

    def page(
        self, page: int, per_page: int, *, action: str | None = None, actor: str | None = None
    ) -> tuple[list[AuditEntry], int]:
        """One page of rows, newest first, and how many rows match."""
        query = _filtered(select(AuditEntry), action, actor)
        with self.store.read_session() as session:
            total = int(session.scalar(_filtered(select(func.count(AuditEntry.id)), action, actor)) or 0)
            rows = session.scalars(
                query.order_by(AuditEntry.id.desc()).offset((page - 1) * per_page).limit(per_page)
            )
            return list(rows), total

    def every(self, *, action: str | None = None, actor: str | None = None) -> Iterator[AuditEntry]:
        """Every matching row, newest first, read in batches (the CSV export)."""
        before: int | None = None
        while True:
            query = _filtered(select(AuditEntry), action, actor)
            if before is not None:
                query = query.where(AuditEntry.id < before)
            with self.store.read_session() as session:
                rows = list(session.scalars(query.order_by(AuditEntry.id.desc()).limit(_BATCH_ROWS)))
            if not rows:
                return
            yield from rows
            before = rows[-1].id


def _filtered(query: Select[Any], action: str | None, actor: str | None) -> Select[Any]:
    if action:
        query = query.where(AuditEntry.action == action)
    if actor:
        query = query.where(AuditEntry.actor == actor)
    return query
