"""The history API on a real running service (uvicorn on 127.0.0.1, real OCR backend, real SQLite).

One service is seeded once for this module with jobs from several sources, answered by OCR of rendered
scans; every test here only reads, so they share it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from bench.render import render_text_image
from db.models import Job
from service.config import Config, HttpConfig, ImagesConfig, StorageConfig, WatchConfig
from service.events import ChatTurn, Event, Priority
from service.http.auth import Auth, Scope
from service.messages import msg
from tests.conftest import InstrumentedBackend, wait_until
from tests.live import LiveService, running_service

KEY = "history-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Seeded:
    live: LiveService
    client: httpx.Client
    jobs: dict[str, Job]  # by label
    data_dir: Path


def _scan(path: Path, line: str) -> Path:
    render_text_image([line], size=(600, 300), font_size=40).save(path, "JPEG", quality=90)
    return path


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, ocr_engine: object) -> Iterator[Seeded]:
    root = tmp_path_factory.mktemp("history-api")
    inbox, uploads = root / "inbox", root / "uploads"
    inbox.mkdir()
    uploads.mkdir()
    config = Config(
        storage=StorageConfig(data_dir=root / "data"),
        http=HttpConfig(enabled=False, api_key=SecretStr(KEY)),
        images=ImagesConfig(),
        watch=[WatchConfig(path=inbox, name="archive", stable_seconds=0.3)],
    )
    with running_service(config, lambda c: InstrumentedBackend(c, ocr_engine)) as live:
        queue = live.app.queue
        corrupt = uploads / "broken.jpg"
        corrupt.write_bytes(_scan(uploads / "whole.jpg", "完整").read_bytes()[:2000])
        events = {
            "bronze": Event(
                source="api",
                question="这是什么文物？",
                images=(str(_scan(uploads / "a.jpg", "青铜鼎 商代晚期")),),
                priority=Priority.INTERACTIVE,
            ),
            "family": Event(
                source="web",
                question="请描述照片",
                images=(str(_scan(uploads / "b.jpg", "民国三十年 全家合影")),),
            ),
            "painting": Event(
                source="kiosk",
                question="=1+1 它是什么年代的？",
                images=(str(_scan(uploads / "c.jpg", "山水画 清代")),),
            ),
            "broken": Event(source="api", question="这是什么？", images=(str(corrupt),)),
            "gone": Event(
                source="api",
                question="这是什么？",
                images=(str(_scan(uploads / "f.jpg", "临时上传")),),
                # A follow-up: the OCR backend reads only the last user turn, so its text is not needed here.
                history=(ChatTurn("user", "之前的问题"), ChatTurn("assistant", "之前的回答")),
            ),
        }
        jobs = {
            label: queue.result(queue.submit(event).uid).result(timeout=120)
            for label, event in events.items()
        }
        Path(jobs["gone"].images[0]).unlink()  # an upload cleaned up since
        jobs["bronze"] = _reviewed_at_a_known_time(live, jobs["bronze"])
        _scan(inbox / "家谱_张氏.jpg", "族谱 第三卷")
        jobs["genealogy"] = wait_until(
            lambda: next((j for j in live.app.store.list_jobs(source="watch") if j.status == "done"), None),
            timeout=60,
        )  # type: ignore[assignment]
        with httpx.Client(base_url=live.base_url, headers=AUTH, timeout=30) as client:
            yield Seeded(live, client, jobs, root / "data")


def _reviewed_at_a_known_time(live: LiveService, job: Job) -> Job:
    """Mark `job` correct by 张馆员, finished 2026-03-01T16:30Z and reviewed 17:00Z (for the CSV's times)."""
    store = live.app.store
    store.set_review(job.id, "correct")
    with store.write_session() as session:
        row = session.get(Job, job.id)
        assert row is not None
        row.finished_at = datetime(2026, 3, 1, 16, 30, tzinfo=UTC)
        row.reviewed_at = datetime(2026, 3, 1, 17, 0, tzinfo=UTC)
        row.reviewed_by = "张馆员"
    updated = store.get(job.id)
    assert updated is not None
    return updated


def ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_seeded_jobs_are_what_the_tests_assume(seeded: Seeded) -> None:
    statuses = {label: job.status for label, job in seeded.jobs.items()}
    assert statuses == {
        "bronze": "done",
        "family": "done",
        "painting": "done",
        "broken": "failed",
        "gone": "done",
        "genealogy": "done",
    }


@pytest.mark.parametrize(
    ("query", "label"),
    [
        ("商代晚期", "bronze"),  # OCR text, through the trigram index
        ("鼎", "bronze"),  # one character: the LIKE fallback
        ("合影", "family"),  # two characters
        ("民国三十年", "family"),
        ("这是什么文物", "bronze"),  # the question
        ("张氏", "genealogy"),  # the file name
        ("家谱_张", "genealogy"),
        ("族谱 第三卷", "genealogy"),
    ],
)
def test_keyword_search_finds_chinese_text(seeded: Seeded, query: str, label: str) -> None:
    response = seeded.client.get("/api/jobs", params={"q": query})
    assert ids(response) == [seeded.jobs[label].id]


def test_a_job_summary_has_the_contract_fields(seeded: Seeded) -> None:
    job = seeded.jobs["genealogy"]
    item = seeded.client.get("/api/jobs", params={"q": "族谱"}).json()["items"][0]
    assert set(item) == {
        "id", "uid", "created_at", "finished_at", "source", "source_ref", "status", "file_name",
        "file_path", "question", "answer", "answer_kind", "ocr_text", "needs_review", "rotation", "notes",
        "error", "review_status", "correction", "reviewed_by", "conversation_id", "thumbnail_url", "model",
        "latency_ms",
    }  # fmt: skip
    assert item["needs_review"] is False and item["rotation"] == 0 and item["notes"] == []
    assert item["file_name"] == "家谱_张氏.jpg" and item["source_ref"] == "archive"
    assert item["ocr_text"] == "族谱第三卷" and item["review_status"] == "unreviewed"
    assert item["thumbnail_url"] == f"/api/jobs/{job.id}/thumbnail"
    detail = seeded.client.get(f"/api/jobs/{seeded.jobs['gone'].id}").json()
    assert detail["history"] == [
        {"role": "user", "text": "之前的问题"},
        {"role": "assistant", "text": "之前的回答"},
    ]


@pytest.mark.parametrize(
    ("params", "labels"),
    [
        ({"source": "api"}, ["gone", "broken", "bronze"]),
        ({"source": "watch"}, ["genealogy"]),
        ({"watch": "archive"}, ["genealogy"]),
        ({"watch": "elsewhere"}, []),
        ({"status": "failed"}, ["broken"]),
        ({"source": "api", "status": "done"}, ["gone", "bronze"]),
        ({"review": "unreviewed", "source": "kiosk"}, ["painting"]),
        ({"review": "corrected"}, []),
        ({"q": "这是什么", "status": "done"}, ["gone", "bronze"]),
    ],
)
def test_filters_combine(seeded: Seeded, params: dict[str, str], labels: list[str]) -> None:
    assert ids(seeded.client.get("/api/jobs", params=params)) == [seeded.jobs[label].id for label in labels]


def test_date_range_is_inclusive_local_days(seeded: Seeded) -> None:
    today = date.today()
    within = seeded.client.get("/api/jobs", params={"date_from": str(today), "date_to": str(today)})
    assert within.json()["total"] == 6
    before = seeded.client.get("/api/jobs", params={"date_to": str(today - timedelta(days=1))})
    after = seeded.client.get("/api/jobs", params={"date_from": str(today + timedelta(days=1))})
    assert before.json()["total"] == after.json()["total"] == 0


def test_paging_keeps_the_total_and_goes_newest_first(seeded: Seeded) -> None:
    pages = [seeded.client.get("/api/jobs", params={"page": p, "per_page": 4}).json() for p in (1, 2, 3)]
    assert [(p["total"], p["page"], p["per_page"], len(p["items"])) for p in pages] == [
        (6, 1, 4, 4),
        (6, 2, 4, 2),
        (6, 3, 4, 0),
    ]
    listed = [item["id"] for page in pages for item in page["items"]]
    newest_first = sorted(seeded.jobs.values(), key=lambda j: (j.created_at, j.id), reverse=True)
    assert listed == [job.id for job in newest_first]


@pytest.mark.parametrize(
    "query", ['"', "*", "NEAR(", "'--", '"; DROP TABLE jobs; --', "鼎*", "甲 OR 乙", "(((("]
)
def test_hostile_queries_are_answered(seeded: Seeded, query: str) -> None:
    response = seeded.client.get("/api/jobs", params={"q": query})
    assert response.status_code == 200 and response.json()["total"] == 0


ZH_HEADER = [
    "编号", "提交时间（Asia/Shanghai）", "完成时间（Asia/Shanghai）", "来源", "来源标识", "文件", "问题",
    "回答", "识别文字", "状态", "错误", "审核状态", "更正", "审核人", "审核时间（Asia/Shanghai）",
]  # fmt: skip
EN_HEADER = [
    "id", "submitted (Asia/Shanghai)", "finished (Asia/Shanghai)", "source", "source ref", "file", "question",
    "answer", "OCR text", "status", "error", "review status", "correction", "reviewed by",
    "reviewed (Asia/Shanghai)",
]  # fmt: skip


def export_rows(seeded: Seeded, **params: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The export's header and its rows by job id (checking the BOM and the download headers)."""
    response = seeded.client.get("/api/jobs/export.csv", params=params)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    assert response.content.startswith(b"\xef\xbb\xbf")
    reader = csv.reader(io.StringIO(response.content.decode("utf-8-sig"), newline=""))
    header, *rows = list(reader)
    return header, {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def test_csv_export_has_a_bom_chinese_headers_and_the_filtered_rows(seeded: Seeded) -> None:
    header, rows = export_rows(seeded, source="kiosk")
    painting = seeded.jobs["painting"]
    assert header == ZH_HEADER
    assert list(rows) == [str(painting.id)]
    row = rows[str(painting.id)]
    assert row["问题"] == "'=1+1 它是什么年代的？"  # never run as a formula in Excel
    assert row["识别文字"] == "山水画清代" and row["审核状态"] == "unreviewed"
    assert row["回答"] == painting.answer
    assert len(export_rows(seeded)[1]) == 6


def test_csv_export_in_english_names_the_columns_and_the_errors_in_english(seeded: Seeded) -> None:
    header, rows = export_rows(seeded, lang="en")
    broken = seeded.jobs["broken"]
    assert header == EN_HEADER
    assert broken.error_code and rows[str(broken.id)]["error"] == msg(broken.error_code).en
    assert export_rows(seeded, lang="zh")[0] == ZH_HEADER


def test_csv_times_are_local_excel_dates_and_the_reviewer_is_named(seeded: Seeded) -> None:
    bronze = seeded.jobs["bronze"]
    row = export_rows(seeded)[1][str(bronze.id)]
    assert row["完成时间（Asia/Shanghai）"] == "2026-03-02 00:30:00"  # finished 2026-03-01T16:30:00Z
    assert row["审核时间（Asia/Shanghai）"] == "2026-03-02 01:00:00"
    assert row["审核人"] == "张馆员" and row["审核状态"] == "correct"
    created = bronze.created_at.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M:%S")
    assert row["提交时间（Asia/Shanghai）"] == created
    assert all(
        re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", r["提交时间（Asia/Shanghai）"])
        for r in export_rows(seeded)[1].values()
    )


def test_thumbnail_is_a_small_jpeg(seeded: Seeded) -> None:
    job = seeded.jobs["bronze"]
    response = seeded.client.get(f"/api/jobs/{job.id}/thumbnail")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and image.size == (256, 128)  # 600×300 scaled to a 256 px long edge
    assert (seeded.data_dir / "thumbs" / f"{job.uid}.jpg").read_bytes() == response.content
    assert seeded.client.get(f"/api/jobs/{job.id}/thumbnail").content == response.content  # from the cache


@pytest.mark.parametrize("label", ["gone", "broken"])
def test_no_thumbnail_when_the_image_is_gone_or_broken(seeded: Seeded, label: str) -> None:
    response = seeded.client.get(f"/api/jobs/{seeded.jobs[label].id}/thumbnail")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/api/jobs/999999", "/api/jobs/999999/thumbnail"])
def test_unknown_jobs_are_404_in_the_openai_shape(seeded: Seeded, path: str) -> None:
    response = seeded.client.get(path)
    assert response.status_code == 404
    error = response.json()["error"]
    assert (
        error["code"] == "api_not_found" and "找不到" in error["message"] and "not found" in error["message"]
    )


FILTERS = ("/api/jobs", "/api/jobs/export.csv")


@pytest.mark.parametrize(
    ("paths", "params", "code"),
    [
        (FILTERS, {"date_from": "2025-13-01"}, "history_bad_date"),
        (FILTERS, {"date_to": "20250301"}, "history_bad_date"),
        (FILTERS, {"date_from": "yesterday"}, "history_bad_date"),
        (FILTERS, {"status": "finished"}, "history_bad_param"),
        (FILTERS, {"review": "maybe"}, "history_bad_param"),
        (FILTERS[:1], {"per_page": "0"}, "history_bad_param"),
        (FILTERS[:1], {"per_page": "201"}, "history_bad_param"),
        (FILTERS[:1], {"per_page": "many"}, "history_bad_param"),
        (FILTERS[:1], {"page": "0"}, "history_bad_param"),
        (FILTERS[1:], {"lang": "fr"}, "history_bad_param"),
    ],
)
def test_bad_parameters_are_400_in_both_languages(
    seeded: Seeded, paths: tuple[str, ...], params: dict[str, str], code: str
) -> None:
    for path in paths:
        response = seeded.client.get(path, params=params)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == code and error["type"] == "invalid_request_error"
        assert " / " in error["message"] and list(params.values())[0] in error["message"]


ROUTES = [
    ("GET", "/api/jobs"),
    ("GET", "/api/jobs/1"),
    ("GET", "/api/jobs/1/thumbnail"),
    ("GET", "/api/jobs/export.csv"),
    ("POST", "/api/jobs/1/review"),
    ("POST", "/api/review/sample"),
    ("GET", "/api/review/stats"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_the_full_key(seeded: Seeded, method: str, path: str) -> None:
    anonymous = httpx.request(method, seeded.live.base_url + path, json={"verdict": "correct"})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "api_unauthorized"


@pytest.mark.parametrize("scope", [Scope.KIOSK, Scope.FEED])
def test_kiosk_and_feed_tokens_open_no_history(seeded: Seeded, scope: Scope) -> None:
    token = Auth(KEY).token(scope)
    for method, path in ROUTES:
        response = httpx.request(method, seeded.live.base_url + path, params={"token": token}, json={})
        assert response.status_code == 401
