"""SQLAlchemy models. The schema is owned by Alembic (db/migrations); a test keeps the two in step."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    inspect,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Mapper, ORMExecuteState, Session, mapped_column

from db.folding import fold
from db.grams import GRAMS_TABLE


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


# The full-text index over jobs (migration 0002, on `search_text` since 0004): an FTS5 virtual table with
# the trigram tokenizer, an external-content index of `jobs` kept in step by triggers. It is not a model:
# SQLAlchemy cannot describe a virtual table, so autogenerate must be told to leave it and its shadow tables
# alone (`include_object`).
FTS_TABLE = "jobs_fts"
# The columns history search looks in, in the order `search_text` joins them.
SEARCHED_COLUMNS = ("question", "answer", "ocr_text", "correction", "file_path")


def search_text_of(values: Iterable[str | None]) -> str:
    """What `jobs.search_text` holds for the SEARCHED_COLUMNS values: each folded, one per line.

    The newline keeps a term from matching across two columns (query terms never contain whitespace).
    """
    return fold("\n".join(value or "" for value in values))


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Alembic autogenerate filter: ignore the FTS5 indexes and their shadow tables (`jobs_fts_data`, ...)."""
    return not (type_ == "table" and name is not None and name.startswith((FTS_TABLE, GRAMS_TABLE)))


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

    # Migration 0003.
    # "ocr" (text read from the image, the question not answered) or "model" (a model's answer).
    answer_kind: Mapped[str | None] = mapped_column(String(16))
    # "stop" or "length" (the answer was cut at the requested maximum).
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    # The catalogue parameters of `error_code`, so the message can be rendered in the reader's language.
    error_params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Things a person should know about a finished job that are not failures (a shortened sidecar name,
    # pages dropped by max_pages): a list of {"code": ..., "params": {...}}.
    notes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # The node (`[node] name`) that claimed the job last; its heartbeat lease decides when to re-queue.
    node: Mapped[str | None] = mapped_column(String(128))
    # How often the job outlived `[model] job_timeout_seconds` (retried once, then failed).
    timeouts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Whether the folder catalogue row of this job has been appended (start-up repair appends missing ones).
    catalogued: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # OCR lines with boxes and confidence, and whether low confidence asks for a person's look.
    ocr_lines: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    needs_review: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    rotation: Mapped[int | None] = mapped_column(Integer)
    reviewed_by: Mapped[str | None] = mapped_column(String(128))
    request_id: Mapped[str | None] = mapped_column(String(64))
    # What the caller asked of the generation (service.events.GenerationOptions.as_dict()).
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Migration 0004: `search_text_of` the searched columns, what the search index holds. Set by the flush
    # hooks below, never by hand; deferred because only the database reads it (`db.history`).
    search_text: Mapped[str | None] = mapped_column(Text, deferred=True)
    # Migration 0005: the node an interactive job was received by (its caller waits there); only that node
    # claims it. Empty for backlog jobs, which any node claims (db/claims.py).
    origin_node: Mapped[str | None] = mapped_column(String(128))
    # Migration 0008: the gram tokens of the new and of the replaced `search_text`, handed to SQLite's gram
    # index triggers by the store's hot writes (db/hot_writes.py) and cleared by them in the same statement:
    # NULL at rest, never read.
    grams_new: Mapped[str | None] = mapped_column(Text, deferred=True)
    grams_old: Mapped[str | None] = mapped_column(Text, deferred=True)

    __table_args__ = (
        Index("ix_jobs_claim", "status", "priority", "id"),
        Index("ix_jobs_file", "file_path", "file_size", "file_mtime"),
        Index("ix_jobs_sha", "sha256", "prompt_hash"),
        Index("ix_jobs_source", "source", "source_ref"),
        Index("ix_jobs_created", "created_at"),
        Index("ix_jobs_conversation", "conversation_id"),
        Index("ix_jobs_review", "status", "review_status"),
        Index("ix_jobs_node", "status", "node"),
        Index("ix_jobs_finished", "source", "source_ref", "finished_at"),
    )


# `search_text` cannot be forgotten: every ORM write of a job (a review, a renamed file, a refused event)
# passes through these flush hooks, whichever store does it. The spine's hot writes (new scans in rounds,
# answers) are Core statements in db/hot_writes.py, which fold with the same `search_text_of`.
@event.listens_for(Job, "before_insert")
def _fold_inserted(_mapper: Mapper[Job], _connection: Connection, job: Job) -> None:
    job.search_text = search_text_of(getattr(job, name) for name in SEARCHED_COLUMNS)


@event.listens_for(Job, "before_update")
def _fold_updated(_mapper: Mapper[Job], _connection: Connection, job: Job) -> None:
    attrs = inspect(job).attrs
    if any(attrs[name].history.has_changes() for name in SEARCHED_COLUMNS):
        job.search_text = search_text_of(getattr(job, name) for name in SEARCHED_COLUMNS)


@event.listens_for(Session, "do_orm_execute")
def _refuse_unfolded_bulk_writes(state: ORMExecuteState) -> None:
    """A bulk `insert(Job)`/`update(Job)` skips the hooks above: one setting a searched column is refused."""
    if not (state.is_insert or state.is_update):
        return
    if getattr(getattr(state.statement, "table", None), "name", None) != Job.__tablename__:
        return
    keys = {str(getattr(key, "key", key)) for key in getattr(state.statement, "_values", None) or {}}
    params = state.parameters or {}
    for row in [params] if isinstance(params, Mapping) else params:
        keys.update(row.keys())
    searched = keys.intersection(SEARCHED_COLUMNS)
    if searched and "search_text" not in keys:
        raise RuntimeError(
            f"a bulk write of jobs sets {sorted(searched)} without search_text: "
            "change searched columns on loaded Job objects (the flush hooks fold them)"
        )


class FileState:
    """What a watched file is doing, as far as tuwen knows (`files.state`)."""

    PRESENT = "present"
    GONE = "gone"


class WatchedFile(Base):
    """The last state tuwen saw of one file in a watched folder (or a `tuwen batch` folder).

    Keyed by the path's *bytes* (`os.fsencode`): names from Windows shares and zips are often GBK, not
    UTF-8, and a text column could neither hold them nor tell two of them apart. `display_path` is the same
    path with undecodable bytes shown as U+FFFD, for people and search. A touched, re-copied or renamed file
    updates its row here instead of becoming a new job.
    """

    __tablename__ = "files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    source_ref: Mapped[str] = mapped_column(String(512))
    path: Mapped[bytes] = mapped_column(LargeBinary)
    display_path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    ctime_ns: Mapped[int] = mapped_column(BigInteger)
    inode: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    job_id: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=FileState.PRESENT)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("source", "source_ref", "path", name="uq_files_path"),
        Index("ix_files_sha", "source", "source_ref", "sha256"),
    )


class Node(Base):
    """One running `tuwen serve` process and its heartbeat (a one-shot CLI hands jobs to a live node)."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[str] = mapped_column(String(32), default="")
    backend: Mapped[str] = mapped_column(String(32), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LoginSession(Base):
    """A signed-in person's session, kept server-side so logout and expiry really end it.

    `id` is the SHA-256 of the cookie's random value: a copy of the database does not hold usable cookies.
    """

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str | None] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16), default="admin")
    csrf_token: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_sessions_expires", "expires_at"),)


# -- staff accounts, the audit log, service settings and webhook deliveries (migration 0005) ---------------


class Role(StrEnum):
    """What a signed-in person may do; each role may do everything the ones before it may."""

    VIEWER = "viewer"  # history, search, export, reports
    REVIEWER = "reviewer"  # + review and correct answers
    ADMIN = "admin"  # + re-run, pause and resume the backlog, accounts, the audit log, webhook deliveries

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what `needed` may."""
        order = list(Role)
        return order.index(self) >= order.index(needed)


class User(Base):
    """A named staff account. `password_hash` is a PHC string: the KDF, its parameters, salt and hash."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    # `db.users.name_key(name)`: what makes two names the same account (case and width folded).
    name_key: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    """Who did what, when: a review, a re-run, a pause, an account change, a login lockout."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(512), default="")
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    address: Mapped[str] = mapped_column(String(64), default="")

    __table_args__ = (Index("ix_audit_at", "at"), Index("ix_audit_action", "action", "at"))


class Setting(Base):
    """One service-wide setting changed at run time (the backlog pause), kept across restarts."""

    __tablename__ = "settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128), default="")


class WebhookDelivery(Base):
    """One event POSTed (or to be POSTed) to one `[[webhook]]`; `body` is the exact bytes signed and sent."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(32), unique=True)
    webhook: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # db.webhooks.DeliveryStatus
    status_code: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_created", "created_at"),
    )
