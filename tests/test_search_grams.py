"""One- and two-character search through the gram index (db/grams.py, migration 0005) on real SQLite files:
the index answers, follows every write, agrees with a plain scan, and counts without reading the jobs."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from db.folding import fold
from db.grams import gram_token, grams
from db.history import search_jobs
from db.models import Job
from db.search import DENSE
from db.store import Store
from service.events import Event, Priority
from service.queue import JobQueue


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(tmp_path / "history.sqlite3")
    db.migrate()
    yield db
    db.close()


def add(store: Store, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "uid": uuid.uuid4().hex,
        "source": "api",
        "question": "",
        "prompt_hash": "0" * 16,
        "status": "done",
        "answer": "",
    }
    values.update(fields)
    return store.add_job(**values)


def ids(store: Store, q: str, **filters: Any) -> list[int]:
    return [job.id for job in search_jobs(store, q=q, per_page=200, **filters).items]


def indexed(store: Store, term: str) -> list[int]:
    """The jobs the gram index itself lists for a (folded) term: no scan involved."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT rowid FROM jobs_grams WHERE jobs_grams MATCH :q"), {"q": gram_token(fold(term))}
        )
        return sorted(int(row[0]) for row in rows)


def test_grams_are_every_character_and_pair_within_a_word() -> None:
    tokens = set(grams("合影 鼎").split())
    assert tokens == {gram_token("合"), gram_token("影"), gram_token("合影"), gram_token("鼎")}
    assert gram_token("影 鼎".replace(" ", "")) not in tokens  # no pair across a space
    assert grams("") == grams(None) == ""


def test_short_terms_of_any_kind_come_from_the_index_and_follow_every_write(store: Store) -> None:
    job = add(store, answer="全家合影，1941年", ocr_text="第5号 ☺")
    other = add(store, answer="山水画")
    for term in ("合影", "合", "19", "5", "号", "☺", "，1"):
        assert indexed(store, term) == [job.id], term
        assert ids(store, term) == [job.id], term
    assert ids(store, "影鼎") == []
    # A person's correction is searchable at once; the model's answer stays searchable too.
    store.set_review(job.id, "corrected", "西周青铜鼎")
    assert ids(store, "鼎") == [job.id]
    assert ids(store, "合影") == [job.id]
    store.set_review(job.id, "correct")
    assert ids(store, "鼎") == []
    assert indexed(store, "鼎") == []
    # Traditional and full-width characters are folded before indexing and before searching.
    folded = add(store, answer="縣誌 ＡＢ")
    assert ids(store, "县") == [folded.id]
    assert ids(store, "ab") == [folded.id]
    with store.engine.begin() as conn:  # deleting a job takes it out of the index
        conn.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": other.id})
    assert indexed(store, "山水") == []
    with store.engine.begin() as conn:  # and the index still holds exactly what the rows say
        conn.execute(text("INSERT INTO jobs_grams(jobs_grams, rank) VALUES ('integrity-check', 0)"))


def test_dense_and_sparse_terms_give_what_a_scan_gives_with_totals_and_filters(store: Store) -> None:
    # More than 1 in DENSE jobs hold 合影 (matched by LIKE on the page), few hold 鼎 (through the index).
    jobs = [
        add(
            store,
            answer=("全家合影" if n % 3 else "青铜鼎") if n % 5 else "山水",
            source="api" if n % 2 else "watch",
        )
        for n in range(DENSE * 2)
    ]
    expected = {
        "合影": [j.id for j in jobs if "合影" in (j.answer or "")],
        "鼎": [j.id for j in jobs if "鼎" in (j.answer or "")],
        "青铜 鼎": [j.id for j in jobs if "青铜鼎" in (j.answer or "")],
        "合影 鼎": [],
    }
    for q, want in expected.items():
        page = search_jobs(store, q=q, per_page=10)
        assert page.total == len(want), q
        assert [job.id for job in page.items] == sorted(want, reverse=True)[:10], q  # newest first
        assert ids(store, q) == sorted(want, reverse=True), q
        watch = [i for i in want if store.get(i).source == "watch"]  # type: ignore[union-attr]
        filtered = search_jobs(store, q=q, source="watch", per_page=200)
        assert (filtered.total, [job.id for job in filtered.items]) == (
            len(watch),
            sorted(watch, reverse=True),
        )


def reference_grams(text: str | None) -> str:
    """The tokens as migration 0005 defined them: a contentless index must keep getting exactly these."""
    tokens: set[str] = set()
    for word in (text or "").split():
        points = [f"{ord(char):x}" for char in word]
        tokens.update("x" + point for point in points)
        tokens.update(f"x{a}x{b}" for a, b in zip(points, points[1:], strict=False))
    return " ".join(sorted(tokens))


def test_the_tokens_are_exactly_those_the_index_was_built_with() -> None:
    rnd = random.Random(7)
    alphabet = [*"abc 123 .\t\n", "合", "影", "鼎", "縣", "\u3000", "\u00a0", "\u0301", "\U0001f600", "☺"]
    texts = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40))) for _ in range(2000)]
    assert [grams(t) for t in texts] == [reference_grams(t) for t in texts]


def test_the_spines_own_writes_hand_the_index_its_tokens_and_leave_it_exact(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The function the triggers call, counted: the hot writes (a round of scans, answers under their
    # claims) must not call back into Python from inside SQLite (migration 0008).
    calls: list[str | None] = []
    monkeypatch.setattr("db.grams.grams", lambda text: calls.append(text) or reference_grams(text))
    hot = Store(store.path)  # its connections register the counted function
    queue = JobQueue(hot)
    names = ["合影-001.png", "鼎-002.png", "山水-003.png"]
    events = [
        Event(source="watch", source_ref="inbox", question="描述", images=(f"/scans/{n}",),
              priority=Priority.BACKLOG, sha256=f"{i:064x}")
        for i, n in enumerate(names)
    ]  # fmt: skip
    queue.submit_backlog(events)
    claimed = hot.claim(3, node="n1")
    answers = {claimed[0].id: "全家福 1941", claimed[1].id: "青铜器", claimed[2].id: "远山"}
    for job in claimed:
        hot.finish(job.id, claim=(job.node, job.attempts), claimed=job, status="done", answer=answers[job.id])
    assert calls == []
    first = claimed[0].id
    assert (
        indexed(hot, "福") == [first]
        and indexed(hot, "合影") == [first]
        and indexed(hot, "描") == [job.id for job in claimed]
    )
    # A person's correction (the ORM's way) after a hot answer: the tokens it replaces are the hot ones.
    hot.set_review(first, "corrected", "鼎")
    hot.set_review(first, "correct")
    with hot.engine.connect() as conn:
        given = conn.execute(
            text("SELECT count(*) FROM jobs WHERE grams_new IS NOT NULL OR grams_old IS NOT NULL")
        )
        assert given.scalar() == 0  # handed over and cleared in the same statement: nothing kept
        rows = conn.execute(text("SELECT id, search_text FROM jobs")).all()
    # Every token of every job is listed for that job and no other: nothing missing, nothing stale.
    expected: dict[str, set[int]] = {}
    for job_id, search_text in rows:
        for token in reference_grams(search_text).split():
            expected.setdefault(token, set()).add(job_id)
    with hot.engine.connect() as conn:
        for token, jobs in expected.items():
            listed = [
                r[0]
                for r in conn.execute(
                    text("SELECT rowid FROM jobs_grams WHERE jobs_grams MATCH :q"), {"q": token}
                )
            ]
            assert sorted(listed) == sorted(jobs), token
    assert indexed(hot, "鼎") == [claimed[1].id]  # the withdrawn correction is gone from the index
    hot.close()
