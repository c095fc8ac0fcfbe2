"""History search on real SQLite files: the trigram index, short terms, filters, paging, dates,
and migration 0002 on a database that already holds jobs."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import inspect, text

from db.history import search_jobs
from db.models import Job
from db.store import MIGRATIONS_DIR, Store


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
        "question": "请描述",
        "prompt_hash": "0" * 16,
        "status": "done",
        "answer": "",
    }
    values.update(fields)
    return store.add_job(**values)


def uids(store: Store, **filters: Any) -> list[str]:
    return [job.uid for job in search_jobs(store, per_page=200, **filters).items]


def fts_rowids(store: Store, expression: str) -> list[int]:
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT rowid FROM jobs_fts WHERE jobs_fts MATCH :q"), {"q": expression})
        return sorted(int(row[0]) for row in rows)


def test_chinese_terms_of_three_or_more_characters_are_found_through_the_trigram_index(store: Store) -> None:
    photo = add(store, answer="民国三十年的全家合影", file_path="/scans/家谱/张氏_1941.jpg")
    bronze = add(store, answer="一件青铜器", ocr_text="商代晚期 饕餮纹")
    add(store, answer="山水画")
    assert uids(store, q="民国三十") == [photo.uid]
    assert uids(store, q="饕餮纹") == [bronze.uid]  # OCR text
    assert uids(store, q="张氏_1941") == [photo.uid]  # the file name
    assert uids(store, q="家谱/张") == [photo.uid]  # and its folder
    # The same rows come straight from the FTS5 index (the search above used it, not a scan).
    assert fts_rowids(store, '"民国三十"') == [photo.id]
    assert fts_rowids(store, '"饕餮纹"') == [bronze.id]


def test_one_and_two_character_terms_are_found_through_the_gram_index(store: Store) -> None:
    ding = add(store, answer="西周青铜鼎")
    group = add(store, ocr_text="全家合影")
    add(store, answer="山水画")
    assert fts_rowids(store, '"鼎"') == []  # trigrams cannot find a single character...
    assert uids(store, q="鼎") == [ding.uid]  # ...the gram index does (tests/test_search_grams.py)
    assert uids(store, q="合影") == [group.uid]
    assert set(uids(store, q="青铜 鼎")) == {ding.uid}  # a long and a short term, both required


def test_like_wildcards_in_short_terms_are_literal(store: Store) -> None:
    percent = add(store, answer="增长5%")
    add(store, answer="增长50倍")
    underscore = add(store, answer="a_b")
    add(store, answer="ab")
    assert uids(store, q="5%") == [percent.uid]
    assert uids(store, q="a_") == [underscore.uid]


@pytest.mark.parametrize(
    "query",
    [
        '"',
        "*",
        "NEAR(",
        "'--",
        '"民国',
        "民国\"三十'",
        "OR",
        "a AND b",
        "NOT x",
        "answer:鼎",
        "^民国",
        "鼎*",
        "(((",
        "\x00\x00\x00",  # FTS5 would stop reading at a NUL
        "鼎\x00鼎",
        "\\",
    ],
)
def test_hostile_queries_are_plain_text(store: Store, query: str) -> None:
    add(store, answer="民国三十年")
    hit = add(store, answer=f"原文：{query}")
    found = uids(store, q=query)
    assert hit.uid in found


def test_filters_combine(store: Store) -> None:
    watch_done = add(store, source="watch", source_ref="archive", answer="青铜鼎")
    add(store, source="watch", source_ref="other", answer="青铜鼎")
    add(store, source="watch", source_ref="archive", status="failed", error="坏文件")
    api_done = add(store, source="api", answer="青铜鼎")
    store.set_review(api_done.id, "correct")
    assert len(uids(store, q="鼎", source="watch")) == 2
    assert uids(store, q="鼎", watch="archive") == [watch_done.uid]
    assert uids(store, watch="archive", status="done") == [watch_done.uid]
    assert len(uids(store, watch="archive", status="failed")) == 1
    assert uids(store, q="鼎", review="correct") == [api_done.uid]
    assert uids(store, q="鼎", review="reviewed") == [api_done.uid]
    assert api_done.uid not in uids(store, review="unreviewed")


def test_paging_is_newest_first_with_a_total(store: Store) -> None:
    start = datetime(2025, 5, 1, tzinfo=UTC)
    jobs = [add(store, answer=f"第{i}张", created_at=start + timedelta(hours=i)) for i in range(7)]
    pages = [search_jobs(store, page=page, per_page=3) for page in (1, 2, 3, 4)]
    assert [p.total for p in pages] == [7, 7, 7, 7]
    assert [len(p.items) for p in pages] == [3, 3, 1, 0]
    assert [job.uid for p in pages for job in p.items] == [job.uid for job in reversed(jobs)]


@pytest.fixture
def shanghai_time() -> Iterator[None]:
    """The process in UTC+8 (a fixed-offset zone needs no tzdata), so local and UTC days differ."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "CST-8"
    time.tzset()
    yield
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_dates_are_local_calendar_days(store: Store, shanghai_time: None) -> None:
    late_evening = add(store, created_at=datetime(2024, 3, 1, 15, 30, tzinfo=UTC))  # 23:30 on 1 March
    after_midnight = add(store, created_at=datetime(2024, 3, 1, 16, 30, tzinfo=UTC))  # 00:30 on 2 March
    march_1, march_2 = date(2024, 3, 1), date(2024, 3, 2)
    assert uids(store, date_from=march_1, date_to=march_1) == [late_evening.uid]
    assert uids(store, date_from=march_2, date_to=march_2) == [after_midnight.uid]
    assert uids(store, date_from=march_2) == [after_midnight.uid]
    assert uids(store, date_to=march_2) == [after_midnight.uid, late_evening.uid]
    assert uids(store, date_from=march_2, date_to=march_1) == []


def test_reviews_keep_the_index_in_step(store: Store) -> None:
    job = add(store, answer="一只瓷瓶")
    store.set_review(job.id, "corrected", "清代青花瓷瓶")
    assert uids(store, q="青花瓷") == [job.uid]
    assert uids(store, q="一只瓷瓶") == [job.uid]  # the model's answer stays searchable
    store.set_review(job.id, "corrected", "明代釉里红")
    assert uids(store, q="青花瓷") == []
    assert uids(store, q="釉里红") == [job.uid]
    store.set_review(job.id, "correct")
    assert uids(store, q="釉里红") == []
    with store.engine.begin() as conn:  # the delete trigger (nothing in tuwen deletes jobs yet)
        conn.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": job.id})
    assert fts_rowids(store, '"一只瓷瓶"') == []
    assert _fts_integrity(store) == "ok"


def _alembic(store: Store, action: str, revision: str) -> None:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with store.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        getattr(command, action)(cfg, revision)


def _fts_integrity(store: Store) -> str:
    # Raises when the index is damaged; with rank 1 it also checks the index against `jobs` itself.
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO jobs_fts(jobs_fts, rank) VALUES ('integrity-check', 1)"))
    return "ok"


def test_migration_indexes_jobs_that_existed_before_it_and_downgrades(tmp_path: Path) -> None:
    store = Store(tmp_path / "old.sqlite3")
    _alembic(store, "upgrade", "0001")
    with store.engine.begin() as conn:
        for n, (answer, path) in enumerate(
            [("民国三十年合影", "/scans/a.jpg"), ("青铜鼎", "/scans/古籍_卷一.tif")]
        ):
            conn.execute(
                text(
                    "INSERT INTO jobs (uid, created_at, updated_at, source, source_ref, priority, status,"
                    " file_path, question, prompt_hash, images, history, extra, dedup, answer, attempts)"
                    " VALUES (:uid, '2025-01-01 00:00:00', '2025-01-01 00:00:00', 'watch', 'archive', 10,"
                    " 'done', :path, '请描述', :hash, '[]', '[]', '{}', 0, :answer, 1)"
                ),
                {"uid": f"{n:032x}", "path": path, "hash": "0" * 16, "answer": answer},
            )
    store.migrate()  # what `tuwen serve` does on start
    assert [job.review_status for job in search_jobs(store).items] == ["unreviewed", "unreviewed"]
    assert uids(store, q="民国三十年") == [f"{0:032x}"]
    assert uids(store, q="古籍_卷") == [f"{1:032x}"]
    assert uids(store, q="鼎") == [f"{1:032x}"]
    assert _fts_integrity(store) == "ok"

    _alembic(store, "downgrade", "0001")
    inspector = inspect(store.engine)
    assert not any(name.startswith("jobs_fts") for name in inspector.get_table_names())
    assert {"review_status", "correction", "reviewed_at"}.isdisjoint(
        column["name"] for column in inspector.get_columns("jobs")
    )
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 2
        assert conn.execute(text("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'")).scalar() == 0
    store.migrate()
    assert uids(store, q="民国三十年") == [f"{0:032x}"]
    store.close()
