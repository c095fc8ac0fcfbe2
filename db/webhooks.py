"""Webhook deliveries (`webhook_deliveries`): every event sent, or still to be sent, to a `[[webhook]]`.

A row is written before the first attempt (status `pending`) with the exact body that is signed and sent,
and updated after each attempt: the status code or error, how many attempts, when the next one is due, and
finally `delivered` or `failed` (attempts used up). Pending rows left by a stop are sent at the next start.
The secret is never stored here: the signature is computed when sending.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import func, select

from db.models import WebhookDelivery, utcnow
from db.store import Store


class DeliveryStatus:
    """Where a delivery stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class DeliveryStore:
    """Reads and writes of `webhook_deliveries`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(
        self, webhook: str, url: str, event: str, job_id: int | None, body: str, delivery_id: str = ""
    ) -> WebhookDelivery:
        """A new pending delivery (`body` is the exact text to send); returns the row."""
        row = WebhookDelivery(
            delivery_id=delivery_id or secrets.token_hex(16),
            webhook=webhook[:64],
            url=url,
            event=event,
            job_id=job_id,
            body=body,
            status=DeliveryStatus.PENDING,
            attempts=0,
            next_attempt_at=utcnow(),
        )
        with self.store.write_session() as session:
            session.add(row)
            session.flush()
            return row

    def attempted(
        self,
        row_id: int,
        *,
        status_code: int | None,
        error: str | None,
        delivered: bool,
        next_attempt_at: datetime | None,
    ) -> None:
        """Record one attempt: delivered, failed for good (`next_attempt_at` None), or due again later."""
        with self.store.write_session() as session:
            row = session.get_one(WebhookDelivery, row_id)
            row.attempts += 1
            row.status_code, row.last_error = status_code, error
            if delivered:
                row.status, row.delivered_at, row.next_attempt_at = DeliveryStatus.DELIVERED, utcnow(), None
            elif next_attempt_at is None:
                row.status, row.next_attempt_at = DeliveryStatus.FAILED, None
            else:
                row.next_attempt_at = next_attempt_at

    def pending(self) -> list[WebhookDelivery]:
        """Deliveries not yet delivered or given up, oldest first (resumed at start)."""
        with self.store.read_session() as session:
            query = select(WebhookDelivery).where(WebhookDelivery.status == DeliveryStatus.PENDING)
            return list(session.scalars(query.order_by(WebhookDelivery.id)))

    def get(self, row_id: int) -> WebhookDelivery | None:
        """One delivery by row id."""
        with self.store.read_session() as session:
            return session.get(WebhookDelivery, row_id)

    def page(self, page: int, per_page: int) -> tuple[list[WebhookDelivery], int]:
        """One page of deliveries, newest first, and how many there are."""
        with self.store.read_session() as session:
            total = int(session.scalar(select(func.count(WebhookDelivery.id))) or 0)
            rows = session.scalars(
                select(WebhookDelivery)
                .order_by(WebhookDelivery.id.desc())
                .offset((page - 1) * per_page)
                .limit(per_page)
            )
            return list(rows), total
