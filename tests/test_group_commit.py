"""Answers recorded together (db/group_commit.py) on SQLite and a real PostgreSQL: answers waiting for the
writer are written in one transaction, each caller gets its own job back, and one answer the database
refuses does not take the others with it."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from db.history import search_jobs
from db.models import JobStatus
from db.store import Store
from service.events import Event, Priority
from service.queue import JobQueue
from tests.conftest import wait_until


@pytest.fixture
def store(store_on_each: Store) -> Store:
    return store_on_each


def claimed(store: Store, count: int) -> list[Any]:
    events = [
        Event(source="watch", source_ref="inbox", question="描述", images=(f"/scans/第{n}号.png",),
              priority=Priority.BACKLOG, sha256=f"{n:064x}")
        for n in range(count)
    ]  # fmt: skip
    JobQueue(store).submit_backlog(events)
    return store.claim(count, node="node-a")


def finish_together(store: Store, answers: dict[int, dict[str, Any]], jobs: list[Any]) -> dict[int, Any]:
    """Every job's finish from its own thread, all queued behind a writer held meanwhile, then let go."""
    results: dict[int, Any] = {}

    def finish(job: Any) -> None:
        try:
            results[job.id] = store.finish(
                job.id, claim=(job.node, job.attempts), claimed=job, **answers[job.id]
            )
        except Exception as exc:
            results[job.id] = exc

    threads = [threading.Thread(target=finish, args=(job,)) for job in jobs]
    with store.write_session():  # the writer is busy: every answer queues for it
        for thread in threads:
            thread.start()
        wait_until(lambda: len(store._answers._queue) == len(jobs))
    for thread in threads:
        thread.join(30)
    return results


def test_answers_waiting_together_are_each_written_and_returned(store: Store) -> None:
    jobs = claimed(store, 8)
    answers = {job.id: {"status": JobStatus.DONE, "answer": f"答案{job.id}"} for job in jobs}
    results = finish_together(store, answers, jobs)
    assert {job_id: (r.status, r.answer) for job_id, r in results.items()} == {
        job.id: (JobStatus.DONE, f"答案{job.id}") for job in jobs
    }
    for job in jobs:
        stored = store.get(job.id)
        assert stored is not None and (stored.status, stored.answer) == (JobStatus.DONE, f"答案{job.id}")
        assert [j.id for j in search_jobs(store, q=f"答案{job.id}").items] == [job.id]


def test_one_answer_the_database_refuses_does_not_take_the_others_with_it(store: Store) -> None:
    jobs = claimed(store, 6)
    bad = jobs[2].id
    answers: dict[int, dict[str, Any]] = {job.id: {"status": JobStatus.DONE, "answer": "好"} for job in jobs}
    answers[bad] = {"status": None, "answer": "坏"}  # NOT NULL: the shared transaction fails on it
    results = finish_together(store, answers, jobs)
    assert isinstance(results.pop(bad), IntegrityError)
    assert {r.status for r in results.values()} == {JobStatus.DONE}
    assert {job.id: store.get(job.id).status for job in jobs} == {  # type: ignore[union-attr]
        job.id: JobStatus.RUNNING if job.id == bad else JobStatus.DONE for job in jobs
    }
