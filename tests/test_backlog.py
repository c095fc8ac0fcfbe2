"""The backlog pause on a real database: kept in `settings` (a new reader sees it, as after a restart), and
the claim range it gives leaves backlog jobs queued while interactive and CLI ones are claimed, for the
sequential worker's whole-range claims and the dispatcher's interactive and backlog ranges alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from db.store import Store
from service.backlog import BacklogPause
from service.dispatch import BACKLOG, INTERACTIVE
from service.events import Event, Priority
from service.queue import JobQueue


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "tuwen.sqlite3")
    store.migrate()
    yield store
    store.close()


def queued(store: Store) -> dict[int, int]:
    queue = JobQueue(store)
    ids = {}
    for priority in (Priority.INTERACTIVE, Priority.CLI, Priority.BACKLOG):
        event = Event(source="api", question="?", images=("x.png",), priority=priority)
        ids[int(priority)] = queue.submit(event).id
    return ids


def claimed(store: Store, pause: BacklogPause, priorities: tuple[int, int] | None) -> list[int]:
    """Claim as the worker does, round after round (one priority per claim), until nothing comes."""
    got: list[int] = []
    while True:
        claim_any, allowed = pause.claim_range(priorities)
        jobs = store.claim(10, priorities=allowed) if claim_any else []
        if not jobs:
            return got
        got += [job.priority for job in jobs]


def test_a_pause_is_kept_in_the_database(store: Store) -> None:
    BacklogPause(store).set(True, "zhao")
    state = BacklogPause(store).state()
    assert BacklogPause(store).paused() and (state["paused"], state["by"]) == (True, "zhao")
    BacklogPause(store).set(False, "zhao")
    assert BacklogPause(store).paused() is False and BacklogPause(store).state()["since"] is None


@pytest.mark.parametrize(
    ("ranges", "expected"),
    [
        ([None], [int(Priority.INTERACTIVE), int(Priority.CLI)]),
        ([INTERACTIVE, BACKLOG], [int(Priority.INTERACTIVE), int(Priority.CLI)]),
    ],
    ids=["worker", "dispatcher"],
)
def test_while_paused_only_backlog_jobs_stay_queued(
    store: Store, ranges: list[tuple[int, int] | None], expected: list[int]
) -> None:
    ids = queued(store)
    pause = BacklogPause(store)
    pause.set(True, "test")
    got = sorted(priority for span in ranges for priority in claimed(store, pause, span))
    assert got == expected
    backlog = store.get(ids[int(Priority.BACKLOG)])
    assert backlog is not None and backlog.status == "queued"
    pause.set(False, "test")
    assert claimed(store, pause, None) == [int(Priority.BACKLOG)]
