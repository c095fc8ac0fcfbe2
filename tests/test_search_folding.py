"""Search folds traditional/simplified Chinese and full/half width, on real SQLite files: rows written by
the real queue and store (submit, finish, review, rename), migration 0004 on a database of old rows, and
the folding function itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import inspect, text, update

from db.folding import fold
from db.history import search_jobs
from db.models import Job, JobStatus, search_text_of
from db.store import MIGRATIONS_DIR, Store
from service.events import Event
from service.queue import JobQueue


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[JobQueue]:
    store = Store(tmp_path / "history.sqlite3")
    store.migrate()
    yield JobQueue(store)
    store.close()


def answered(queue: JobQueue, answer: str, *, question: str = "请描述", path: str | None = None) -> Job:
    """A job submitted through the queue, claimed and finished the way the worker records an answer."""
    source = "watch" if path else "api"
    job = queue.submit(Event(source=source, question=question, images=(path or "/tmp/upload.jpg",)))
    assert [claimed.id for claimed in queue.store.claim(1)] == [job.id]
    return queue.store.finish(job.id, status=JobStatus.DONE, answer=answer, ocr_text=answer)


def found(store: Store, q: str) -> list[int]:
    return [job.id for job in search_jobs(store, q=q, per_page=200).items]


def fts_rowids(store: Store, expression: str) -> list[int]:
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT rowid FROM jobs_fts WHERE jobs_fts MATCH :q"), {"q": expression})
        return sorted(int(row[0]) for row in rows)


def fts_integrity(store: Store) -> str:
    # With rank 1 FTS5 also checks the index against the `search_text` column it was built from.
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO jobs_fts(jobs_fts, rank) VALUES ('integrity-check', 1)"))
    return "ok"


@pytest.mark.parametrize(
    ("written", "query"),
    [
        ("清代佈告一張", "布告"),  # the example: a simplified query, a traditional answer
        ("臺北縣政府公文", "县政府"),
        ("台北县政府公文", "縣政府"),  # and the reverse
        ("编号ＡＢＣ１２３的藏品", "abc123"),  # full-width text, half-width query
        ("编号abc123的藏品", "ＡＢＣ１２３"),  # and the reverse
        ("编号ABC123的藏品", "abc123"),  # case
        ("本縣戶籍", "县"),  # one character: the LIKE fallback, on the folded text
        ("本县户籍", "縣"),
        ("本縣戶籍", "户籍"),  # two characters
    ],
)
def test_a_query_finds_the_other_script_and_width(queue: JobQueue, written: str, query: str) -> None:
    hit = answered(queue, written)
    answered(queue, "山水画一幅")
    assert found(queue.store, query) == [hit.id]
    shown = search_jobs(queue.store, q=query).items[0]
    assert shown.answer == written and shown.ocr_text == written  # the original text, never the folded one


def test_long_terms_use_the_index_of_the_folded_text(queue: JobQueue) -> None:
    notice = answered(queue, "縣政府佈告")
    assert fts_rowids(queue.store, '"县政府"') == [notice.id]
    assert fts_rowids(queue.store, '"縣政府"') == []  # the index holds only folded text...
    assert found(queue.store, "縣政府") == [notice.id]  # ...so queries are folded before matching
    assert found(queue.store, "縣政府 布告") == [notice.id]  # every term, each folded
    assert found(queue.store, "縣政府 鼎") == []


def test_the_question_and_the_file_path_are_folded_too(queue: JobQueue) -> None:
    scan = answered(queue, "一张照片", path="/scans/臺灣縣誌/卷一.jpg")
    chat = queue.submit(Event(source="api", question="這張佈告是哪一年的？", images=("/tmp/x.jpg",)))
    assert found(queue.store, "这张布告") == [chat.id]  # still queued: the row as submitted is searchable
    assert found(queue.store, "台湾县志") == [scan.id]


def test_a_staff_correction_in_traditional_is_found_by_a_simplified_query(queue: JobQueue) -> None:
    job = answered(queue, "一只瓷瓶")
    queue.store.set_review(job.id, "corrected", "乾隆年間縣誌所載青花瓷瓶")
    assert found(queue.store, "乾隆年间县志") == [job.id]
    assert found(queue.store, "一只瓷瓶") == [job.id]  # the model's answer stays searchable
    queue.store.set_review(job.id, "corrected", "明代釉裡紅")
    assert found(queue.store, "县志") == []  # the replaced correction is gone from the index
    assert found(queue.store, "釉里红") == [job.id]
    queue.store.set_review(job.id, "correct")
    assert found(queue.store, "釉里红") == []
    assert fts_integrity(queue.store) == "ok"


def test_a_renamed_file_is_found_by_its_new_folded_name(queue: JobQueue, tmp_path: Path) -> None:
    old_path, new_path = tmp_path / "舊檔案.jpg", tmp_path / "臺灣族譜.jpg"
    job = answered(queue, "一张照片", path=str(old_path))
    queue.files.save("watch", "", str(old_path).encode(), str(old_path), (1, 1, 1, 1), None, job.id)
    queue.files.move(
        "watch", "", str(old_path).encode(), str(new_path).encode(), str(new_path), str(new_path)
    )
    assert found(queue.store, "台湾族谱") == [job.id]
    assert found(queue.store, "旧档案") == []
    assert fts_integrity(queue.store) == "ok"


def test_a_bulk_update_of_a_searched_column_is_refused(queue: JobQueue) -> None:
    job = answered(queue, "縣政府佈告")
    with pytest.raises(RuntimeError, match="search_text"), queue.store.write_session() as session:
        session.execute(update(Job).where(Job.id == job.id).values(answer="别的"))
    assert queue.store.retry_failed() == 0  # bulk updates of other columns go on as before
    assert queue.store.get(job.id).answer == "縣政府佈告"  # type: ignore[union-attr]
    assert found(queue.store, "县政府") == [job.id]


# --- migration 0004 on a database of old rows ------------------------------------------------------------

OLD_ROWS = [  # answer, correction, file path
    ("清代佈告一張", None, "/scans/a.jpg"),
    ("台北县政府公文", "臺北縣政府公文（副本）", "/scans/b.jpg"),
    ("编号ＡＢＣ１２３", None, "/scans/臺灣/c.jpg"),
]
FILLER_ROWS = 2345  # more than one batch of the fill


def _alembic(store: Store, action: str, revision: str) -> None:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with store.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        getattr(command, action)(cfg, revision)


def _insert_old_rows(store: Store) -> None:
    rows = [
        {
            "uid": f"{n:032x}",
            "answer": a,
            "correction": c,
            "path": p,
            "review": "corrected" if c else "unreviewed",
        }
        for n, (a, c, p) in enumerate(OLD_ROWS)
    ] + [
        {"uid": f"f{n:031x}", "answer": f"第{n}張", "correction": None, "path": None, "review": "unreviewed"}
        for n in range(FILLER_ROWS)
    ]
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (uid, created_at, updated_at, source, source_ref, priority, status,"
                " file_path, question, prompt_hash, images, history, extra, dedup, answer, attempts,"
                " review_status, correction) VALUES (:uid, '2025-01-01 00:00:00', '2025-01-01 00:00:00',"
                " 'watch', 'archive', 10, 'done', :path, '請描述', :hash, '[]', '[]', '{}', 0, :answer, 1,"
                " :review, :correction)"
            ),
            [{**row, "hash": "0" * 16} for row in rows],
        )


def _id_of(store: Store, uid: str) -> int:
    job = store.get_by_uid(uid)
    assert job is not None
    return job.id


def test_migration_folds_rows_written_before_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "old.sqlite3")
    _alembic(store, "upgrade", "0003")
    _insert_old_rows(store)
    store.migrate()  # what `tuwen serve` does on start
    first, second, third = (_id_of(store, f"{n:032x}") for n in range(3))
    assert found(store, "布告") == [first]
    assert found(store, "縣政府") == [second]
    assert found(store, "副本") == [second]  # the old correction
    assert found(store, "abc123") == [third]
    assert found(store, "台湾") == [third]  # its folder
    assert search_jobs(store, q="第1234张").total == 1  # a row of a later batch of the fill
    assert search_jobs(store, q="描述").total == FILLER_ROWS + len(OLD_ROWS)  # every question folded
    with store.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT question, answer, ocr_text, correction, file_path, search_text FROM jobs")
        ).all()
    assert all(row[5] == search_text_of(row[:5]) for row in rows)  # what the store writes, exactly
    assert fts_integrity(store) == "ok" and store.integrity_check() == "ok"

    _alembic(store, "downgrade", "0003")  # the 0002 index over the original columns comes back
    assert "search_text" not in {column["name"] for column in inspect(store.engine).get_columns("jobs")}
    assert fts_rowids(store, '"臺北縣政府"') == [second]
    assert fts_integrity(store) == "ok"
    store.migrate()
    assert found(store, "县政府") == [second]
    store.close()


# --- the folding function ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("佈告", "布告"),
        ("縣政府", "县政府"),
        ("ＡＢＣ１２３", "abc123"),
        ("（第一號）：", "(第一号):"),  # full-width punctuation
        ("Ｔｕｗｅｎ", "TUWEN"),
        ("\u3000", " "),  # the ideographic space
        ("\uf900", "\u8c48"),  # a compatibility ideograph and its unified form
    ],
)
def test_fold_maps_both_forms_to_one(one: str, other: str) -> None:
    assert fold(one) == fold(other)


def test_fold_is_stable_and_safe_on_odd_input() -> None:
    sample = "臺北縣政府佈告 ＡＢＣ１２３ ﬃ Straße 😀"
    assert fold(fold(sample)) == fold(sample)
    assert fold("") == "" and fold("甲\x00乙") == "甲\x00乙"
    assert fold("縣\ud800府") == "县\ufffd府"  # a lone surrogate (from JSON) does not raise
