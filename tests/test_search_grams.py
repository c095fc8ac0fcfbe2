"""One- and two-character search through the gram index (db/grams.py, migration 0005) on real SQLite files:
the index answers, follows every write, agrees with a plain scan, and counts without reading the jobs."""

from __future__ import annotations

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
