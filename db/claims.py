"""The claim: one `WITH chosen AS MATERIALIZED (SELECT … LIMIT n) UPDATE jobs … FROM chosen RETURNING …`,
on SQLite (3.35+) and PostgreSQL alike.

A claim is the spine's hottest write (a concurrent dispatcher claims once per answer), so it is a Core
statement built once per shape, not an ORM select-then-update: one round trip, no identity map. On
PostgreSQL the inner select takes `FOR UPDATE SKIP LOCKED`, so nodes claiming at the same moment take
different jobs instead of waiting on each other; SQLite (3.35+ for RETURNING) has one writer at a time.

The rules the statement keeps:
- due jobs only (`next_attempt_at` empty or past), most urgent priority first, then oldest;
- a batch never mixes priorities: only jobs of the most urgent due priority are taken, and when that
  priority is `alone_at_or_below` or more urgent, only one (someone waits on it, often watching it stream);
- an interactive job (`origin_node` set) is claimed only by the node that received it: its caller's
  connection is there. Backlog jobs (folders, batches) have no origin node and go to whoever is free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, Update, and_, bindparam, case, func, literal, or_, select, update
from sqlalchemy.orm import configure_mappers, instrumentation

from db.models import Job, JobStatus

_jobs: Table = Job.__table__  # type: ignore[assignment]
# What a claim returns: every column the worker and the recorder read, and `search_text`, which lets the
# answer's write hand the gram index the tokens it replaces (db/hot_writes.py); not the transient grams.
RETURNED = tuple(column for column in _jobs.columns if column.key not in ("grams_new", "grams_old"))
_LOWEST, _HIGHEST = -(2**31), 2**31 - 1
_MANAGER = instrumentation.manager_of_class(Job)


def _new_job() -> Job:
    configure_mappers()  # once, then a no-op check: an unconfigured mapper has no attribute implementations
    return _MANAGER.new_instance()  # type: ignore[no-any-return]


def claim_statement(postgresql: bool, with_uids: bool) -> Update:
    """The claim for one dialect, with or without a `uids` filter; parameters are bound at execution."""
    c = _jobs.c
    due = [
        c.status == JobStatus.QUEUED,
        or_(c.next_attempt_at.is_(None), c.next_attempt_at <= bindparam("now")),
        c.priority.between(bindparam("lowest"), bindparam("highest")),
        or_(c.origin_node.is_(None), c.origin_node == bindparam("origin")),
    ]
    if with_uids:
        due.append(c.uid.in_(bindparam("uids", expanding=True)))
    most_urgent = select(func.min(c.priority)).where(*due).scalar_subquery()
    size = case((most_urgent <= bindparam("alone"), literal(1)), else_=bindparam("limit"))
    chosen = select(c.id).where(and_(*due), c.priority == most_urgent).order_by(c.priority, c.id).limit(size)
    if postgresql:
        chosen = chosen.with_for_update(skip_locked=True)
    # A MATERIALIZED CTE, chosen once: as a plain subquery PostgreSQL may run it again for every row it
    # updates, and each run, skipping the rows this statement just locked, picks another job.
    picked = chosen.cte("chosen").prefix_with("MATERIALIZED")
    return (
        update(_jobs)
        .where(c.id == picked.c.id, c.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING,
            started_at=bindparam("started"),
            attempts=c.attempts + 1,
            node=bindparam("node"),
        )
        .returning(*RETURNED)
    )


def claim_parameters(
    limit: int,
    now: datetime,
    *,
    uids: Sequence[str] | None,
    alone_at_or_below: int,
    node: str | None,
    priorities: tuple[int, int] | None,
) -> dict[str, Any]:
    """The values bound into `claim_statement` for one claim."""
    lowest, highest = priorities if priorities is not None else (_LOWEST, _HIGHEST)
    params: dict[str, Any] = {
        "now": now,
        "started": now,
        "lowest": lowest,
        "highest": highest,
        "origin": node or "",
        "alone": alone_at_or_below,
        "limit": max(1, limit),
        "node": node,
    }
    if uids is not None:
        params["uids"] = list(uids)
    return params


def detached_job(row: Mapping[Any, Any]) -> Job:
    """A detached `Job` holding a returned row's columns (callers read it, never re-attach it).

    `Job(**row)` runs the ORM's instrumented constructor, an attribute event per column: 70 µs for the
    fifty columns a claim returns, twice per job at a backlog's full speed. Filling a new instance's
    `__dict__` is what the ORM's own loading does: 3 µs.
    """
    job: Job = _new_job()
    job.__dict__.update(row)
    return job


def jobs_of(rows: Sequence[Any]) -> list[Job]:
    """Detached `Job` objects for the claimed rows, oldest first (callers read them, never re-attach)."""
    jobs = [detached_job(row) for row in rows]
    jobs.sort(key=lambda job: job.id)
    return jobs
