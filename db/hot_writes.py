"""The spine's hottest writes as Core statements: new jobs, many at a time, and a job's outcome.

At a backlog's full speed every new scan and every answer is one write transaction through the store's
single writer, and the ORM's unit of work (identity map, attribute history, flush ordering) was most of
their cost: 1.5 ms a new scan and 1 ms an answer on this project's 2-core test machine, with the folder's
intake and up to `[openai] concurrency` answering threads queued behind the one lock. These statements are
built once and take plain dictionaries; a batch of new scans is one `INSERT … RETURNING id` with many rows.

The ORM's flush hooks (db/models.py) keep `jobs.search_text` folded; Core bypasses them, so these functions
fold it themselves with the same `search_text_of`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from sqlalchemy import Connection, Table, Update, bindparam, insert, select, update

from db.claims import RETURNED
from db.models import SEARCHED_COLUMNS, Job, JobStatus, search_text_of, utcnow

_jobs: Table = Job.__table__  # type: ignore[assignment]
_INSERT = insert(_jobs).returning(_jobs.c.id, sort_by_parameter_order=True)
_SEARCHED = select(*(_jobs.c[name] for name in SEARCHED_COLUMNS), _jobs.c.status, _jobs.c.node)
_SEARCHED = _SEARCHED.add_columns(_jobs.c.attempts).where(_jobs.c.id == bindparam("job_id"))


def insert_jobs(connection: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert new job rows (each the same columns) in one statement; their ids, in the rows' order."""
    if not rows:
        return []
    now = utcnow()
    values = []
    for row in rows:
        value = {"created_at": now, "updated_at": now, **row}
        value["search_text"] = search_text_of(value.get(name) for name in SEARCHED_COLUMNS)
        values.append(value)
    return [int(job_id) for job_id in connection.execute(_INSERT, values).scalars()]


def finish_job(
    connection: Connection,
    job_id: int,
    claim: tuple[str | None, int] | None,
    fields: Mapping[str, Any],
    *,
    lock: bool,
) -> tuple[bool, Job | None]:
    """Write a job's outcome; (whether it was written, the row as it stands afterwards).

    With `claim` nothing is written unless the job is still running under that very claim (node, attempts).
    The searched columns are read first (under `FOR UPDATE` with `lock`, i.e. on PostgreSQL) so the new
    `search_text` folds the row's own question and file name together with the answer.
    """
    current = connection.execute(_SEARCHED.with_for_update() if lock else _SEARCHED, {"job_id": job_id})
    row = current.mappings().first()
    if row is None:
        return False, None
    if claim is not None and (row["status"], row["node"], row["attempts"]) != (JobStatus.RUNNING, *claim):
        return False, _job(connection, job_id)
    values = dict(fields)
    values.setdefault("finished_at", utcnow())
    values.update(next_attempt_at=None, updated_at=utcnow())
    if any(name in values for name in SEARCHED_COLUMNS):
        merged = {name: values.get(name, row[name]) for name in SEARCHED_COLUMNS}
        values["search_text"] = search_text_of(merged[name] for name in SEARCHED_COLUMNS)
    params = {f"v_{name}": value for name, value in values.items()}
    written = connection.execute(_update(frozenset(values)), {"job_id": job_id, **params}).mappings().first()
    return True, Job(**dict(written)) if written is not None else None


@cache
def _update(columns: frozenset[str]) -> Update:
    """`UPDATE jobs SET … WHERE id = :job_id RETURNING …` for one set of columns, built once.

    A fresh statement per answer spent more time computing its cache key (it returns fifty columns) than
    SQLite spent running it; an outcome writes one of a handful of column sets.
    """
    values: dict[str, Any] = {name: bindparam(f"v_{name}") for name in sorted(columns)}
    return update(_jobs).where(_jobs.c.id == bindparam("job_id")).values(values).returning(*RETURNED)


def _job(connection: Connection, job_id: int) -> Job | None:
    row = connection.execute(select(*RETURNED).where(_jobs.c.id == job_id)).mappings().first()
    return Job(**dict(row)) if row is not None else None
