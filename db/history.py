"""Read-side queries over the job history: search, filters, paging, review statistics and review samples.

Keyword search (which index answers each term, folding, a fast count) is `db.search`; this module
combines it with the other filters.

Dates (`date_from`, `date_to`, both inclusive) are calendar days in the *server's local timezone* (the
`TZ` of the service process), because that is the day staff see on the wall clock where the box stands;
they are converted to UTC instants for the `created_at` column, which stores UTC.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from statistics import NormalDist
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, select, tuple_

from db.models import Job, JobStatus, ReviewStatus
from db.search import fast_count, page_conditions, text_conditions
from db.store import Store

MAX_PER_PAGE = 200
REVIEW_FILTERS = (*ReviewStatus.ALL, "reviewed")  # "reviewed": correct or corrected
STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.DONE, JobStatus.FAILED)
CONFIDENCE = 0.95
_Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)  # 1.959963984540054


@dataclass(frozen=True)
class JobFilter:
    """What to look for; every given field narrows the set (they combine with AND)."""

    q: str = ""
    source: str | None = None
    watch: str | None = None  # a watch key: jobs of that folder watch
    status: str | None = None
    date_from: date | None = None  # inclusive, server-local calendar day
    date_to: date | None = None  # inclusive, server-local calendar day
    review: str | None = None  # one of REVIEW_FILTERS


@dataclass(frozen=True)
class SearchPage:
    """One page of a search, newest first, and how many jobs match in all."""

    items: list[Job]
    total: int
    page: int
    per_page: int


@dataclass(frozen=True)
class ReviewStats:
    """How many done answers people have checked and how many were right (Wilson interval for the rate)."""

    done: int
    reviewed: int
    reviewed_share: float | None
    correct: int
    corrected: int
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float = CONFIDENCE


def search_jobs(
    store: Store,
    q: str = "",
    source: str | None = None,
    watch: str | None = None,
    status: str | None = None,
    date_from: date | None = None,
    date_to: date | None = None,
    review: str | None = None,
    page: int = 1,
    per_page: int = 50,
) -> SearchPage:
    """One page of the jobs matching every given filter, newest first, with the total count.

    Raises ValueError for a page below 1, `per_page` outside 1..MAX_PER_PAGE, or an unknown status or
    review filter (the HTTP layer checks first and answers with a catalogue message).
    """
    if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
        raise ValueError(f"page {page} / per_page {per_page} out of range")
    others = filter_conditions(JobFilter("", source, watch, status, date_from, date_to, review))
    with store.read_session() as session:
        if others or not q.strip():
            counted = [*others, *text_conditions(q)]
            total = session.scalar(select(func.count()).select_from(Job).where(*counted)) or 0
        else:
            total = fast_count(session, q)
        items = session.scalars(
            select(Job)
            .where(*others, *page_conditions(session, q))
            .order_by(Job.created_at.desc(), Job.id.desc())
            .offset((page - 1) * per_page)
            .limit(per_page)
        ).all()
    return SearchPage(items=list(items), total=int(total), page=page, per_page=per_page)


def iter_jobs(
    store: Store, job_filter: JobFilter, batch: int = 500, *, where: Sequence[ColumnElement[bool]] = ()
) -> Iterator[Job]:
    """Every job matching `job_filter`, newest first, read in short batches (for exports of any size).

    Keyset paging on (created_at, id) rather than OFFSET: jobs finishing during a long export neither
    shift rows into a later batch twice nor out of it. `where` adds conditions a `JobFilter` cannot say
    (a report's exact UTC period and its scope).
    """
    conditions = [*filter_conditions(job_filter), *where]
    after: tuple[datetime, int] | None = None
    while True:
        query = select(Job).where(*conditions)
        if after is not None:
            created, job_id = after
            # A row-value comparison: SQLite seeks the (created_at, id) index to the resume point; the
            # equivalent OR of two conditions made it read again from the newest row for every batch.
            query = query.where(tuple_(Job.created_at, Job.id) < tuple_(created, job_id))
        with store.read_session() as session:
            rows = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(batch)))
        yield from rows
        if len(rows) < batch:
            return
        after = (rows[-1].created_at, rows[-1].id)


def filter_conditions(job_filter: JobFilter) -> list[ColumnElement[bool]]:
    """The WHERE conditions for `job_filter` (ANDed by the caller). Raises ValueError for unknown values."""
    f = job_filter
    conditions: list[ColumnElement[bool]] = list(text_conditions(f.q))
    if f.source:
        conditions.append(Job.source == f.source)
    if f.watch:
        # Folder-watch jobs record the watch key as source_ref; other sources use it for chat ids etc.
        conditions.append(and_(Job.source == "watch", Job.source_ref == f.watch))
    if f.status:
        if f.status not in STATUSES:
            raise ValueError(f"unknown status {f.status!r}")
        conditions.append(Job.status == f.status)
    if f.review:
        if f.review not in REVIEW_FILTERS:
            raise ValueError(f"unknown review filter {f.review!r}")
        if f.review == "reviewed":
            conditions.append(Job.review_status.in_([ReviewStatus.CORRECT, ReviewStatus.CORRECTED]))
        else:
            conditions.append(Job.review_status == f.review)
    if f.date_from is not None:
        conditions.append(Job.created_at >= local_day_start(f.date_from))
    if f.date_to is not None and f.date_to < date.max:
        conditions.append(Job.created_at < local_day_start(f.date_to + timedelta(days=1)))
    return conditions


def local_day_start(day: date) -> datetime:
    """The UTC instant at which `day` begins in the server's local timezone."""
    # A naive datetime's astimezone() reads the process's local zone (TZ), DST included. The first and last
    # days a datetime can hold (0001-01-01, 9999-12-31) would overflow when shifted by the zone's offset:
    # no job is that old or that new, so the earliest and latest instants stand in for them.
    try:
        return datetime.combine(day, time.min).astimezone().astimezone(UTC)
    except (OverflowError, ValueError):
        return datetime.min.replace(tzinfo=UTC) if day.year < 2 else datetime.max.replace(tzinfo=UTC)


def review_stats(store: Store, *, where: Sequence[ColumnElement[bool]] = ()) -> ReviewStats:
    """Counts over done jobs and the accuracy of the reviewed ones: correct / (correct + corrected).

    The 95 % interval is Wilson's score interval, which stays inside [0, 1] and behaves for the small
    samples staff actually review (the normal approximation gives nonsense at 10 of 10). `where` narrows
    the jobs counted (a report's period and scope); by default every done job counts.
    """
    with store.read_session() as session:
        row = session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(case((Job.review_status == ReviewStatus.CORRECT, 1), else_=0)), 0),
                func.coalesce(func.sum(case((Job.review_status == ReviewStatus.CORRECTED, 1), else_=0)), 0),
            ).where(Job.status == JobStatus.DONE, *where)
        ).one()
    done, correct, corrected = int(row[0]), int(row[1]), int(row[2])
    reviewed = correct + corrected
    if reviewed == 0:
        return ReviewStats(done, 0, 0.0 if done else None, 0, 0, None, None, None)
    low, high = wilson_interval(correct, reviewed)
    return ReviewStats(
        done=done,
        reviewed=reviewed,
        reviewed_share=reviewed / done,
        correct=correct,
        corrected=corrected,
        accuracy=correct / reviewed,
        ci_low=low,
        ci_high=high,
    )


def wilson_interval(successes: int, trials: int, z: float = _Z) -> tuple[float, float]:
    """Wilson's score interval for a proportion (`z` = 1.96 gives 95 %). Raises ValueError for no trials."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"{successes} of {trials} is not a proportion")
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def sample_for_review(store: Store, n: int) -> list[Job]:
    """Up to `n` done jobs nobody has reviewed yet: the ones the reader flagged (`needs_review`) first.

    A flagged page is where a silently wrong number hides, so staff see those first; the rest of the sample
    is random. The accuracy estimate counts every reviewed job, so reviewing mostly flagged pages makes it
    pessimistic, never flattering.
    """
    if n < 1:
        return []
    with store.read_session() as session:
        return list(
            session.scalars(
                select(Job)
                .where(Job.status == JobStatus.DONE, Job.review_status == ReviewStatus.UNREVIEWED)
                .order_by(Job.needs_review.desc(), func.random())
                .limit(n)
            )
        )


def stats_dict(stats: ReviewStats) -> dict[str, Any]:
    """The JSON shape of `GET /api/review/stats`."""
    return {
        "done": stats.done,
        "reviewed": stats.reviewed,
        "reviewed_share": stats.reviewed_share,
        "correct": stats.correct,
        "corrected": stats.corrected,
        "accuracy": stats.accuracy,
        "ci_low": stats.ci_low,
        "ci_high": stats.ci_high,
        "confidence": stats.confidence,
    }
