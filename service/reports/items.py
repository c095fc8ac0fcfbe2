"""The jobs a report lists one by one: its new items (with thumbnails) and the corrections staff made.

The new-items table is capped at MAX_ITEMS rows, oldest first: a month of a busy archive would otherwise make
an HTML file of hundreds of megabytes of thumbnails. The report says how many more there are; the CSV always
has every job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, func, select

from db.models import Job, JobStatus, ReviewStatus
from db.store import Store
from service.config import ImagesConfig
from service.messages import all_codes, msg
from service.thumbnails import thumbnail_bytes

MAX_ITEMS = 200
MAX_CORRECTIONS = 50


@dataclass(frozen=True)
class ReportItem:
    """One job for the report's tables (new items, corrections)."""

    job_id: int
    uid: str
    created: datetime  # local time in the report's timezone
    source: str
    source_zh: str
    source_en: str
    source_ref: str
    file_name: str | None
    question: str
    answer: str
    status: str
    review_status: str
    correction: str | None
    thumbnail: bytes | None  # JPEG, long edge <= 256 px
    link: str | None  # into the web UI / API, when the report has a base_url

    @property
    def who(self) -> str:
        """The file name for folder jobs, the chat or sender id for bots, else the source's name."""
        return self.file_name or self.source_ref or self.source_zh


@dataclass(frozen=True)
class LinkContext:
    """What turning a job into a `ReportItem` needs: local time, links, and where thumbnails come from."""

    tz: ZoneInfo
    base_url: str  # no trailing slash; "" when the report does not know the web UI's address
    data_dir: Path
    images: ImagesConfig


def job_link(base_url: str, job_id: int) -> str | None:
    """The job's own page in the web UI (`/jobs/{id}`), when the report knows where the web UI is."""
    return f"{base_url}/jobs/{job_id}" if base_url else None


def source_names(source: str) -> tuple[str, str]:
    """The catalogue's Chinese and English names of a source label (the label itself when unknown)."""
    code = f"ui_source_{source}"
    if code in all_codes():
        message = msg(code)
        return message.zh, message.en
    return source, source


def new_items(
    store: Store, in_period: list[ColumnElement[bool]], context: LinkContext
) -> tuple[list[ReportItem], int]:
    """The period's done jobs, oldest first, at most MAX_ITEMS, with thumbnails; and how many there are."""
    done = [*in_period, Job.status == JobStatus.DONE]
    with store.read_session() as session:
        total = session.scalar(select(func.count()).select_from(Job).where(*done)) or 0
        jobs = session.scalars(
            select(Job).where(*done).order_by(Job.created_at, Job.id).limit(MAX_ITEMS)
        ).all()
    return [_item(job, context, thumbnails=True) for job in jobs], int(total)


def corrections(
    store: Store, reviewed_in_period: list[ColumnElement[bool]], context: LinkContext
) -> list[ReportItem]:
    """Jobs corrected by staff in the period (by review time), at most MAX_CORRECTIONS, without thumbnails."""
    with store.read_session() as session:
        jobs = session.scalars(
            select(Job)
            .where(*reviewed_in_period, Job.review_status == ReviewStatus.CORRECTED)
            .order_by(Job.reviewed_at, Job.id)
            .limit(MAX_CORRECTIONS)
        ).all()
    return [_item(job, context, thumbnails=False) for job in jobs]


def _item(job: Job, context: LinkContext, *, thumbnails: bool) -> ReportItem:
    zh, en = source_names(job.source)
    thumbnail = thumbnail_bytes(job, context.data_dir, context.images) if thumbnails else None
    return ReportItem(
        job_id=job.id,
        uid=job.uid,
        created=job.created_at.astimezone(context.tz),
        source=job.source,
        source_zh=zh,
        source_en=en,
        source_ref=job.source_ref or "",
        file_name=Path(job.file_path).name if job.file_path else None,
        question=job.question or "",
        answer=job.answer or "",
        status=job.status,
        review_status=job.review_status or ReviewStatus.UNREVIEWED,
        correction=job.correction,
        thumbnail=thumbnail,
        link=job_link(context.base_url, job.id),
    )
