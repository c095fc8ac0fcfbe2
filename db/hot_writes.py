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
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Connection, RowMapping, Table, Update, bindparam, insert, select, update

from db.claims import RETURNED
from db.grams import grams
from db.models import SEARCHED_COLUMNS, Job, JobStatus, search_text_of, utcnow

_jobs: Table = Job.__table__  # type: ignore[assignment]
_INSERT = insert(_jobs).returning(_jobs.c.id, sort_by_parameter_order=True)
_RETURNED_KEYS = tuple(column.key for column in RETURNED)
# What an outcome's write checks of the claimed row (`Outcome.known`).
KNOWN_COLUMNS = (*SEARCHED_COLUMNS, "search_text")
_SEARCHED = select(*(_jobs.c[name] for name in SEARCHED_COLUMNS), _jobs.c.status, _jobs.c.node)
_SEARCHED = _SEARCHED.add_columns(_jobs.c.attempts).where(_jobs.c.id == bindparam("job_id"))


def job_rows(rows: Sequence[Mapping[str, Any]], *, gram_index: bool = False) -> list[dict[str, Any]]:
    """New job rows ready to insert: timestamps and the folded `search_text` (before the writer is taken).

    With `gram_index` (SQLite) also the gram tokens, handed to the index's trigger (migration 0008).
    """
    now = utcnow()
    values = []
    for row in rows:
        value = {"created_at": now, "updated_at": now, **row}
        value["search_text"] = search_text_of(value.get(name) for name in SEARCHED_COLUMNS)
        if gram_index:
            value["grams_new"] = grams(value["search_text"])
        values.append(value)
    return values


def insert_jobs(connection: Connection, values: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert `job_rows` (each the same columns) in one statement; their ids, in the rows' order."""
    if not values:
        return []
    return [int(job_id) for job_id in connection.execute(_INSERT, values).scalars()]


@dataclass(frozen=True)
class Outcome:
    """One job's outcome to write: the fields, the claim it must still hold, what the claim saw."""

    job_id: int
    claim: tuple[str | None, int] | None
    fields: Mapping[str, Any]
    # The claimed row (at least its KNOWN_COLUMNS: question, file name, correction, search_text): with it
    # and a claim, the outcome is one guarded UPDATE instead of a read and an update.
    known: Mapping[str, Any] | None = None

    def searched(self) -> bool:
        return any(name in self.fields for name in SEARCHED_COLUMNS)

    def values(self, row: Mapping[Any, Any]) -> dict[str, Any]:
        """The columns to set, `search_text` folded with `row`'s searched columns where these keep them."""
        now = utcnow()
        values = {"finished_at": now, **self.fields, "next_attempt_at": None, "updated_at": now}
        if self.searched():
            values["search_text"] = search_text_of(
                values.get(name, row.get(name)) for name in SEARCHED_COLUMNS
            )
        return values


def claimed_row(job: Job) -> dict[str, Any] | None:
    """The columns of a job as its claim returned them (None when `job` did not come from a claim)."""
    state = job.__dict__
    if any(key not in state for key in _RETURNED_KEYS):
        return None
    return {key: state[key] for key in _RETURNED_KEYS}


@dataclass(frozen=True)
class GuardedWrite:
    """An outcome's one-statement write, prepared before the writer is taken, and the columns it sets."""

    statement: Update
    params: dict[str, Any]
    values: dict[str, Any]

    def row(self, known: Mapping[str, Any]) -> dict[str, Any]:
        """The row once written: the claimed row with the columns set (the guard held: no one else's)."""
        row = {**known, **self.values}
        row.pop("grams_new", None)
        row.pop("grams_old", None)
        return row


def guarded_update(outcome: Outcome, *, gram_index: bool = False) -> GuardedWrite | None:
    """The one-statement write of an outcome whose claim and searched columns are known, else None.

    Prepared before the writer is taken: folding the text is the costliest part, and every moment the
    writer is held, every other outcome waits. With `gram_index` (SQLite) and the row's `search_text` known,
    the gram tokens of the old and the new text go with it (migration 0008), and the WHERE checks that the
    row's text is still the one the old tokens come from.
    """
    claim, known = outcome.claim, outcome.known
    if claim is None or known is None:
        return None
    values = outcome.values(known)
    old_text = known.get("search_text")
    if gram_index and "search_text" in values and old_text is not None:
        values["grams_new"], values["grams_old"] = grams(values["search_text"]), grams(old_text)
    params = _set_params(values)
    params.update({f"k_{name}": known.get(name) for name in KNOWN_COLUMNS})
    params.update(job_id=outcome.job_id, k_node=claim[0], k_attempts=claim[1])
    return GuardedWrite(_update(frozenset(values), outcome.searched()), params, values)


def finish_job(
    connection: Connection, outcome: Outcome, guarded: GuardedWrite | None, *, lock: bool
) -> tuple[bool, RowMapping | None]:
    """Write a job's outcome; (whether it was written, the row as it stands afterwards).

    With a claim nothing is written unless the job is still running under that very claim (node, attempts).
    `search_text` folds the row's own question and file name together with the answer: by `guarded`
    (`guarded_update`) when the row still has the columns as known (checked in its WHERE), else read first
    (under `FOR UPDATE` with `lock`, i.e. on PostgreSQL). A scan renamed while it was answered takes the
    second way. A guarded write returns no row (None): it is `guarded.row(known)`. Fetching and converting
    fifty returned columns was half the time the writer was held for an answer, with every other answer
    waiting on it.
    """
    if guarded is not None and connection.execute(guarded.statement, guarded.params).rowcount == 1:
        return True, None
    job_id, claim = outcome.job_id, outcome.claim
    current = connection.execute(_SEARCHED.with_for_update() if lock else _SEARCHED, {"job_id": job_id})
    row = current.mappings().first()
    if row is None:
        return False, None
    if claim is not None and (row["status"], row["node"], row["attempts"]) != (JobStatus.RUNNING, *claim):
        return False, _row(connection, job_id)
    values = outcome.values(row)
    params = {"job_id": job_id, **_set_params(values)}
    return True, connection.execute(_update(frozenset(values)), params).mappings().first()


def _set_params(values: Mapping[str, Any]) -> dict[str, Any]:
    # `_update`'s SET placeholders: a bound parameter may not share a column's name in an UPDATE.
    return {f"v_{name}": value for name, value in values.items()}


@cache
def _update(columns: frozenset[str], guarded: bool | None = None) -> Update:
    """`UPDATE jobs SET … WHERE id = :job_id RETURNING …` for one set of columns, built once.

    A fresh statement per answer spent more time computing its cache key (it returns fifty columns) than
    SQLite spent running it; an outcome writes one of a handful of column sets. With `guarded` (not None)
    only while the claim holds (`k_node`, `k_attempts`), and with True only while the searched columns
    are as known (`k_question`, …).
    """
    c = _jobs.c
    values: dict[str, Any] = {name: bindparam(f"v_{name}") for name in sorted(columns)}
    where = [c.id == bindparam("job_id")]
    if guarded is not None:
        where += [
            c.status == JobStatus.RUNNING,
            c.node.is_not_distinct_from(bindparam("k_node")),
            c.attempts == bindparam("k_attempts"),
        ]
    if guarded:
        where += [c[name].is_not_distinct_from(bindparam(f"k_{name}")) for name in SEARCHED_COLUMNS]
    if guarded and "grams_old" in columns:
        where.append(c.search_text == bindparam("k_search_text"))
    statement = update(_jobs).where(*where).values(values)
    return statement if guarded is not None else statement.returning(*RETURNED)


def _row(connection: Connection, job_id: int) -> RowMapping | None:
    return connection.execute(select(*RETURNED).where(_jobs.c.id == job_id)).mappings().first()
