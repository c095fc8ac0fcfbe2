"""The spine's hottest writes (db/hot_writes.py) on SQLite and on a real PostgreSQL server (tests/pg.py).

A round of new scans is one INSERT with many rows and their `files` rows in the same transaction; an
answer is one guarded UPDATE. What a user would notice if these were wrong: a scan queued twice or not at
all, a file row naming another scan's job, history search missing a scan's name or its answer, an answer
written over a job another node has re-claimed, and a scan renamed while it was answered found only by its
old name.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select

from db.claims import RETURNED
from db.files import FileStore
from db.history import search_jobs
from db.models import Job, JobStatus
from db.store import Store
from service.config import WatchConfig
from service.events import Event, Priority
from service.queue import JobQueue
from watchers.intake import FileIntake

# Traditional characters in the names: search folds them (db/folding.py), so 旧照片 must find 舊照片.
NAMES = ("舊照片-001.png", "舊照片-002.png", "合影-003.png")


@pytest.fixture
def store(store_on_each: Store) -> Store:
    return store_on_each


def scan_event(name: str) -> Event:
    return Event(
        source="watch", source_ref="inbox", question="描述这张图片", images=(f"/scans/{name}",),
        priority=Priority.BACKLOG, sha256=name.encode().hex().ljust(64, "0")[:64],
    )  # fmt: skip


def test_a_round_of_new_scans_is_one_write_in_order_with_their_file_rows(store: Store) -> None:
    queue = JobQueue(store)
    files = FileStore(store)
    saved = []

    def record_files(connection: object, ids: list[int]) -> None:
        rows = [
            (f"/scans/{n}".encode(), f"/scans/{n}", (1, 2, 3, i), None, i)
            for i, n in zip(ids, NAMES, strict=True)
        ]
        saved.extend(files.save_many_in(connection, "watch", "inbox", rows))  # type: ignore[arg-type]

    ids = queue.submit_backlog([scan_event(name) for name in NAMES], dedup=True, also=record_files)

    assert len(ids) == 3 and ids == sorted(ids)
    jobs = [store.get(job_id) for job_id in ids]
    assert [job.file_path for job in jobs if job] == [f"/scans/{name}" for name in NAMES]
    assert all(job is not None and job.status == JobStatus.QUEUED and job.dedup == 1 for job in jobs)
    recorded = files.load("watch", "inbox")
    assert {seen.path: seen.job_id for seen in recorded.values()} == {
        f"/scans/{name}".encode(): job_id for name, job_id in zip(NAMES, ids, strict=True)
    }
    assert [seen.job_id for seen in saved] == ids
    # The folded search text was written with the rows: long and short terms, traditional as simplified.
    assert [job.id for job in search_jobs(store, q="旧照片").items] == [ids[1], ids[0]]
    assert [job.id for job in search_jobs(store, q="合影").items] == [ids[2]]


def test_backlog_rounds_take_backlog_events_only(store: Store) -> None:
    question = Event(
        source="api", question="这是什么？", images=("/tmp/a.png",), priority=Priority.INTERACTIVE
    )
    with pytest.raises(ValueError):
        JobQueue(store).submit_backlog([question])
    assert search_jobs(store).total == 0


def claimed_job(store: Store, name: str = NAMES[0]):  # type: ignore[no-untyped-def]
    JobQueue(store).submit_backlog([scan_event(name)])
    (job,) = store.claim(1, node="node-a")
    return job


def test_an_answer_is_written_under_its_claim_and_found_by_answer_and_name(store: Store) -> None:
    job = claimed_job(store)
    done = store.finish(
        job.id, claim=(job.node, job.attempts), claimed=job, status=JobStatus.DONE, answer="一张全家福"
    )
    assert (done.status, done.answer, done.node) == (JobStatus.DONE, "一张全家福", "node-a")
    assert done.finished_at is not None and done.next_attempt_at is None
    assert [j.id for j in search_jobs(store, q="全家福").items] == [job.id]
    assert [j.id for j in search_jobs(store, q="旧照片").items] == [job.id]  # the name is still searchable


def test_the_answered_job_handed_on_is_the_row_as_stored(store: Store) -> None:
    # The guarded write returns no row: the job the recorder hands to sidecars, webhooks and the feed is
    # the claimed row with the columns written. It must be what a fresh read of the database gives.
    job = claimed_job(store)
    done = store.finish(
        job.id,
        claim=(job.node, job.attempts),
        claimed=job,
        status=JobStatus.DONE,
        answer="一张全家福",
        ocr_lines=[{"text": "全家福", "box": [1, 2, 3, 4], "score": 0.9}],
        latency_ms=12,
    )
    with store.engine.connect() as connection:
        stored = connection.execute(select(*RETURNED).where(Job.id == job.id)).mappings().one()
    assert {key: getattr(done, key) for key in stored} == dict(stored)


def test_an_answer_whose_claim_was_taken_over_is_discarded(store: Store) -> None:
    job = claimed_job(store)
    store.requeue([job.id])
    (again,) = store.claim(1, node="node-b")
    late = store.finish(
        job.id, claim=(job.node, job.attempts), claimed=job, status=JobStatus.DONE, answer="迟到的"
    )
    assert (late.status, late.node, late.answer) == (JobStatus.RUNNING, "node-b", None)
    kept = store.finish(
        again.id, claim=(again.node, again.attempts), claimed=again, status=JobStatus.DONE, answer="准时"
    )
    assert (kept.status, kept.answer) == (JobStatus.DONE, "准时")


def test_a_scan_renamed_while_it_was_answered_is_found_by_its_new_name(store: Store) -> None:
    job = claimed_job(store)
    files = FileStore(store)
    files.save(
        "watch", "inbox", b"/scans/" + NAMES[0].encode(), f"/scans/{NAMES[0]}", (1, 2, 3, 4), None, job.id
    )
    files.move(
        "watch",
        "inbox",
        f"/scans/{NAMES[0]}".encode(),
        "/scans/新名字.png".encode(),
        "/scans/新名字.png",
        "/scans/新名字.png",
    )
    # The answer arrives with the job as claimed, under its old name.
    done = store.finish(
        job.id, claim=(job.node, job.attempts), claimed=job, status=JobStatus.DONE, answer="一张合影"
    )
    assert (done.status, done.file_path) == (JobStatus.DONE, "/scans/新名字.png")
    assert [j.id for j in search_jobs(store, q="新名字").items] == [job.id]
    assert search_jobs(store, q="旧照片").items == []
    assert [j.id for j in search_jobs(store, q="合影").items] == [job.id]


def test_a_round_that_cannot_be_written_together_is_written_one_scan_at_a_time(
    store: Store, tmp_path: Path
) -> None:
    """An unexpected failure of the round's one transaction must not lose its scans: each is queued alone."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    paths = []
    for n in range(4):
        path = inbox / f"scan-{n}.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([n]) * 64)
        paths.append(path)
    queue = JobQueue(store)
    intake = FileIntake(WatchConfig(path=inbox, name="inbox"), queue, max_file_mb=10)
    intake.load()
    rounds: list[int] = []
    real = queue.submit_backlog

    def only_alone(events: list[Event], **kwargs: object) -> list[int]:
        rounds.append(len(events))
        if len(events) > 1:
            raise RuntimeError("the round's transaction failed")
        return real(events, **kwargs)  # type: ignore[arg-type]

    queue.submit_backlog = only_alone  # type: ignore[method-assign]
    intake.take_many([(path, os.stat(path)) for path in paths])

    assert rounds == [4, 1, 1, 1, 1]
    jobs = [
        store.get(seen.job_id) for seen in FileStore(store).load("watch", "inbox").values() if seen.job_id
    ]
    assert sorted(job.file_path for job in jobs if job) == sorted(str(path) for path in paths)
    # Taking them again finds every one recorded: nothing is queued twice.
    intake.take_many([(path, os.stat(path)) for path in paths])
    assert search_jobs(store).total == 4 and rounds == [4, 1, 1, 1, 1]
