"""SQLAlchemy models. The schema is owned by Alembic (db/migrations); a test keeps the two in step."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Index, Integer, String, Text, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on top of SQLite's naive text timestamps."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base for tuwen's tables."""


class JobStatus:
    """The life of a job: queued → running → done | failed (running → queued on retry or restart)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class ReviewStatus:
    """A person's verdict on a done job's answer: not looked at yet, right as it stands, or corrected."""

    UNREVIEWED = "unreviewed"
    CORRECT = "correct"
    CORRECTED = "corrected"
    ALL = (UNREVIEWED, CORRECT, CORRECTED)


# The full-text index over jobs (migration 0002): an FTS5 virtual table with the trigram tokenizer, an
# external-content index of `jobs` kept in step by triggers. It is not a model: SQLAlchemy cannot describe
# a virtual table, so autogenerate must be told to leave it and its shadow tables alone (`include_object`).
FTS_TABLE = "jobs_fts"
FTS_COLUMNS = ("question", "answer", "ocr_text", "correction", "file_path")


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Alembic autogenerate filter: ignore the FTS5 index and its shadow tables (`jobs_fts_data`, ...)."""
    return not (type_ == "table" and name is not None and name.startswith(FTS_TABLE))


class Job(Base):
    """One question about one or more images, from any source, and its answer."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    source: Mapped[str] = mapped_column(String(32))
    source_ref: Mapped[str] = mapped_column(String(512), default="")
    priority: Mapped[int] = mapped_column(Integer, default=10)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)

    # The staff's file for folder and batch jobs (never modified), with the state we saw.
    file_path: Mapped[str | None] = mapped_column(Text)
    file_size: Mapped[int | None] = mapped_column(Integer)
    file_mtime: Mapped[float | None] = mapped_column(Float)
    sha256: Mapped[str | None] = mapped_column(String(64))

    question: Mapped[str] = mapped_column(Text)
    prompt_hash: Mapped[str] = mapped_column(String(16))
    images: Mapped[list[str]] = mapped_column(JSON, default=list)
    conversation_id: Mapped[str | None] = mapped_column(String(128))
    history: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    reply_to: Mapped[str | None] = mapped_column(Text)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dedup: Mapped[int] = mapped_column(Integer, default=0)
    duplicate_of: Mapped[int | None] = mapped_column(Integer)

    answer: Mapped[str | None] = mapped_column(Text)
    reasoning: Mapped[str | None] = mapped_column(Text)
    ocr_text: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    backend: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(128))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    pages: Mapped[int | None] = mapped_column(Integer)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)

    # Staff review (migration 0002). The model's `answer` is never overwritten: a correction sits beside it.
    review_status: Mapped[str] = mapped_column(
        String(16), default=ReviewStatus.UNREVIEWED, server_default=ReviewStatus.UNREVIEWED
    )
    correction: Mapped[str | None] = mapped_column(Text)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_jobs_claim", "status", "priority", "id"),
        Index("ix_jobs_file", "file_path", "file_size", "file_mtime"),
        Index("ix_jobs_sha", "sha256", "prompt_hash"),
        Index("ix_jobs_source", "source", "source_ref"),
        Index("ix_jobs_created", "created_at"),
        Index("ix_jobs_conversation", "conversation_id"),
        Index("ix_jobs_review", "status", "review_status"),
    )
