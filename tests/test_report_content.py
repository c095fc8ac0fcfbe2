"""Report content and files from a history filled through the real queue (OCR backend): the numbers match
the database (counted here with our own SQL), local hours and periods follow the report's timezone, and the
files are what people open: a CSV Excel reads, a real PNG, Markdown with the key numbers, and an HTML page
chromium shows with its images, without any request and without running model output as script."""

from __future__ import annotations

import csv
import io
import math
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from PIL import Image

from db.history import wilson_interval
from db.store import Store
from service.config import ReportConfig
from service.messages import msg
from service.reports import ReportData, ReportFiles, collect, period_bounds, write_report
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.report_history import (
    CORRECTION,
    FORMULA_ANSWER,
    HOSTILE_ANSWER,
    SINCE_UTC,
    UNTIL_UTC,
    History,
    build_history,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
BASE_URL = "http://tuwen.local:8080"
SINCE, UNTIL = SINCE_UTC.astimezone(SHANGHAI), UNTIL_UTC.astimezone(SHANGHAI)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory, ocr_engine: object) -> History:
    return build_history(tmp_path_factory.mktemp("report-history"), ocr_engine)


@pytest.fixture(scope="module")
def store(history: History) -> Iterator[Store]:
    db = Store(history.db_path)
    yield db
    db.close()


@pytest.fixture(scope="module")
def report() -> ReportConfig:
    return ReportConfig(name="周报", period="week", base_url=BASE_URL + "/")


@pytest.fixture(scope="module")
def data(store: Store, report: ReportConfig) -> ReportData:
    return collect(store, report, SINCE, UNTIL)


@pytest.fixture(scope="module")
def files(store: Store, history: History, report: ReportConfig) -> ReportFiles:
    return write_report(store, history.config, report, SINCE, UNTIL)


def sql(history: History, query: str) -> list[tuple[Any, ...]]:
    """Our own count, straight from the SQLite file, over jobs submitted in the period (UTC text bounds)."""
    bounds = {
        "since": f"{SINCE_UTC:%Y-%m-%d %H:%M:%S}.000000",
        "until": f"{UNTIL_UTC:%Y-%m-%d %H:%M:%S}.000000",
    }
    with sqlite3.connect(history.db_path) as conn:
        return conn.execute(
            query.replace("IN_PERIOD", "created_at >= :since AND created_at < :until"), bounds
        ).fetchall()


def nearest_rank(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def test_totals_by_status_source_and_watch_match_the_database(data: ReportData, history: History) -> None:
    statuses = dict(sql(history, "SELECT status, COUNT(*) FROM jobs WHERE IN_PERIOD GROUP BY status"))
    assert (data.total, data.done, data.failed, data.pending) == (15, statuses["done"], statuses["failed"], 0)
    assert (statuses["done"], statuses["failed"]) == (12, 3)
    by_source = sql(
        history, "SELECT source, COUNT(*), SUM(status = 'done') FROM jobs WHERE IN_PERIOD GROUP BY source"
    )
    assert {(r.key, r.total, r.done) for r in data.by_source} == set(by_source)
    by_watch = sql(
        history,
        "SELECT source_ref, COUNT(*), SUM(status = 'failed') FROM jobs WHERE IN_PERIOD AND source = 'watch' "
        "GROUP BY source_ref",
    )
    assert (
        {(r.key, r.total, r.failed) for r in data.by_watch}
        == set(by_watch)
        == {("archive", 7, 3), ("photos", 2, 0)}
    )
    assert [r.key for r in data.by_source][0] == "watch"  # largest first
    assert data.by_source[0].zh == msg("ui_source_watch").zh


def test_failures_are_grouped_by_code_with_the_bilingual_message(data: ReportData, history: History) -> None:
    expected = sql(
        history,
        "SELECT error_code, COUNT(*) FROM jobs WHERE IN_PERIOD AND status = 'failed' GROUP BY error_code",
    )
    assert (
        {(f.code, f.count) for f in data.failures}
        == set(expected)
        == {("image_corrupt", 2), ("image_empty", 1)}
    )
    corrupt = data.failures[0]
    assert (corrupt.code, corrupt.zh, corrupt.en) == (
        "image_corrupt",
        msg("image_corrupt").zh,
        msg("image_corrupt").en,
    )


def test_latency_percentiles_and_throughput(data: ReportData, history: History) -> None:
    rows = sql(
        history,
        "SELECT (julianday(finished_at) - julianday(created_at)) * 86400000.0, latency_ms FROM jobs "
        "WHERE IN_PERIOD AND status = 'done'",
    )
    turnaround, processing = [r[0] for r in rows], [r[1] for r in rows]
    assert data.turnaround.count == len(rows) == 12
    assert data.turnaround.p50_ms == pytest.approx(nearest_rank(turnaround, 0.5), abs=1)
    assert data.turnaround.p95_ms == pytest.approx(nearest_rank(turnaround, 0.95), abs=1)
    assert data.processing.p50_ms == pytest.approx(nearest_rank(processing, 0.5))
    assert data.processing.p95_ms == pytest.approx(nearest_rank(processing, 0.95))
    assert data.processing.p50_ms is not None and data.processing.p50_ms > 0  # the real worker's timing
    assert data.per_hour == pytest.approx(15 / 72)
    assert data.per_day == pytest.approx(5)


def test_busiest_hour_is_in_the_reports_local_time(data: ReportData) -> None:
    # Five jobs were submitted between 02:30 and 02:45 UTC on different days: 10:30-10:45 in Shanghai.
    assert data.busiest_hours[0] == (10, 5)
    assert data.hours[2] == 0
    assert data.busiest_hours[1] == (11, 2)
    assert sum(data.hours) == data.total


def test_days_and_daily_counts_by_source(data: ReportData, history: History) -> None:
    assert [d.isoformat() for d in data.days] == ["2025-03-03", "2025-03-04", "2025-03-05"]
    assert sum(sum(counts) for counts in data.daily.values()) == data.total
    # 2025-03-04 in Shanghai is 2025-03-03T16:00Z .. 2025-03-04T16:00Z.
    kiosk_on_4th = sql(
        history,
        "SELECT COUNT(*) FROM jobs WHERE source = 'kiosk' AND created_at >= '2025-03-03 16:00:00.000000' "
        "AND created_at < '2025-03-04 16:00:00.000000' AND IN_PERIOD",
    )
    assert data.daily["kiosk"][1] == kiosk_on_4th[0][0] == 1


def test_frequent_questions_group_variants_and_skip_folder_prompts(data: ReportData) -> None:
    # 这是什么？ (kiosk), 这是 什么 (kiosk) and 这是什么? (telegram) are one question; folder prompts are not
    # visitors' questions; the kiosk question asked after the period does not count.
    assert (data.questions[0].text, data.questions[0].count) == ("这是什么？", 3)
    texts = {q.text for q in data.questions}
    assert {"它是什么年代的？", "请描述一下", "请描述"} <= texts and "照片里有谁？" not in texts
    assert sum(q.count for q in data.questions) == 6


def test_reviews_in_the_period_and_the_wilson_interval(data: ReportData) -> None:
    reviews = data.reviews
    assert reviews is not None
    assert (reviews.reviewed, reviews.correct, reviews.corrected) == (4, 3, 1)
    assert reviews.accuracy == pytest.approx(0.75)
    assert (reviews.ci_low, reviews.ci_high) == pytest.approx(wilson_interval(3, 4))
    # a4 was reviewed after the period: not a review *of* the period, but one of its answers is reviewed.
    answers = data.answers_reviewed
    assert answers is not None and (answers.done, answers.reviewed) == (12, 5)
    assert [(item.answer != CORRECTION, item.correction) for item in data.corrections] == [(True, CORRECTION)]


def test_new_items_have_thumbnails_and_links(data: ReportData, history: History) -> None:
    assert data.items_total == len(data.items) == 12
    assert all(item.thumbnail and item.thumbnail[:2] == b"\xff\xd8" for item in data.items)
    first = data.items[0]
    assert first.job_id == history.ids["a1"] and first.who == "a1.jpg"
    assert first.created == datetime(2025, 3, 3, 10, 30, tzinfo=SHANGHAI)
    assert first.link == f"{BASE_URL}/jobs/{first.job_id}"  # the job's own page in the web UI
    assert data.history_url == f"{BASE_URL}/#history"


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ({"watches": ["photos"]}, {"watch": 2}),
        ({"sources": ["kiosk"]}, {"kiosk": 3}),
        ({"sources": ["telegram"], "watches": ["archive"]}, {"telegram": 2, "watch": 7}),
        ({"sources": ["watch", "api"]}, {"watch": 9, "api": 1}),
    ],
)
def test_scope_by_sources_and_watches(
    store: Store, scope: dict[str, list[str]], expected: dict[str, int]
) -> None:
    scoped = collect(store, ReportConfig(name="scoped", **scope), SINCE, UNTIL)  # type: ignore[arg-type]
    assert {row.key: row.total for row in scoped.by_source} == expected


def at(zone: str, *args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(zone))  # type: ignore[misc]


@pytest.mark.parametrize(
    ("zone", "period", "run", "since", "until", "hours"),
    [
        # Shanghai (no DST): a run just after midnight and one just before cover different days.
        ("Asia/Shanghai", "day", (2025, 3, 5, 0, 5), (2025, 3, 4), (2025, 3, 5), 24),
        ("Asia/Shanghai", "day", (2025, 3, 4, 23, 59), (2025, 3, 3), (2025, 3, 4), 24),
        ("Asia/Shanghai", "day", (2025, 3, 1, 18, 0), (2025, 2, 28), (2025, 3, 1), 24),  # across a month end
        ("Asia/Shanghai", "week", (2025, 3, 10, 9, 0), (2025, 3, 3), (2025, 3, 10), 168),
        ("Asia/Shanghai", "month", (2025, 3, 1, 0, 0), (2025, 2, 1), (2025, 3, 1), 28 * 24),
        ("Asia/Shanghai", "month", (2024, 3, 31, 23, 0), (2024, 2, 1), (2024, 3, 1), 29 * 24),  # leap year
        ("Asia/Shanghai", "month", (2025, 1, 15, 9, 0), (2024, 12, 1), (2025, 1, 1), 31 * 24),  # year end
        # Berlin: the day of the spring change (30 March 2025) is 23 hours, the autumn one 25.
        ("Europe/Berlin", "day", (2025, 3, 31, 6, 0), (2025, 3, 30), (2025, 3, 31), 23),
        ("Europe/Berlin", "week", (2025, 3, 31, 6, 0), (2025, 3, 24), (2025, 3, 31), 167),
        ("Europe/Berlin", "day", (2025, 10, 27, 6, 0), (2025, 10, 26), (2025, 10, 27), 25),
        ("Europe/Berlin", "month", (2025, 4, 2, 6, 0), (2025, 3, 1), (2025, 4, 1), 31 * 24 - 1),
    ],
)
def test_period_bounds(
    zone: str, period: str, run: tuple[int, ...], since: tuple[int, ...], until: tuple[int, ...], hours: int
) -> None:
    report = ReportConfig(name="r", timezone=zone, period=period)  # type: ignore[arg-type]
    start, end = period_bounds(report, at(zone, *run).astimezone(UTC))  # the scheduler may pass UTC
    assert (start, end) == (at(zone, *since), at(zone, *until))
    assert start.tzinfo == ZoneInfo(zone) and start.time() == end.time() == datetime.min.time()
    assert (end.astimezone(UTC) - start.astimezone(UTC)) == timedelta(hours=hours)


def test_berlin_spring_day_starts_at_plus_one_and_ends_at_plus_two() -> None:
    start, end = period_bounds(
        ReportConfig(name="r", timezone="Europe/Berlin"), at("Europe/Berlin", 2025, 3, 31, 6)
    )
    assert start.astimezone(UTC) == datetime(2025, 3, 29, 23, tzinfo=UTC)
    assert end.astimezone(UTC) == datetime(2025, 3, 30, 22, tzinfo=UTC)


def test_files_are_written_in_the_dated_folder(files: ReportFiles, history: History) -> None:
    folder = history.config.storage.data_dir / "reports" / "周报" / "2025-03-03_2025-03-05"
    assert files.folder == folder
    assert [p.name for p in files.paths] == [
        f"周报_2025-03-03_2025-03-05.{ext}" for ext in ("md", "html", "csv", "png")
    ]
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert (
        "共 15 项" in files.summary_zh
        and "失败 3 项" in files.summary_zh
        and "10:00–11:00" in files.summary_zh
    )


def test_csv_has_one_row_per_job_and_reads_back(files: ReportFiles, history: History) -> None:
    assert files.csv is not None
    raw = files.csv.read_bytes()
    assert raw.startswith("\ufeff".encode()) and b"\r\n" in raw
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    expected = {row[0]: row[1] for row in sql(history, "SELECT id, status FROM jobs WHERE IN_PERIOD")}
    assert {int(row["id"]): row["status"] for row in rows} == expected
    assert len(rows) == len(expected) == 15 and sorted(r["status"] for r in rows).count("failed") == 3
    by_id = {int(row["id"]): row for row in rows}
    assert by_id[history.ids["k3"]]["answer"] == "'" + FORMULA_ANSWER  # formula-safe
    assert by_id[history.ids["x1"]]["answer"] == HOSTILE_ANSWER
    assert by_id[history.ids["bad2"]]["error_code"] == "image_empty"
    assert by_id[history.ids["a1"]]["created"] == "2025-03-03T10:30:00+08:00"
    assert by_id[history.ids["k1"]]["correction"] == CORRECTION
    assert by_id[history.ids["a1"]]["link"] == f"{BASE_URL}/jobs/{history.ids['a1']}"


def test_png_is_a_real_chart(files: ReportFiles) -> None:
    assert files.png is not None
    with Image.open(files.png) as image:
        assert image.format == "PNG" and image.size == (1000, 450)
        pixels = image.convert("L")
        dark = sum(pixels.histogram()[:200])
    assert dark > 5000  # bars, axes and labels, not a blank canvas


def test_the_chart_shows_each_days_failed_share_on_labelled_axes(data: ReportData, history: History) -> None:
    from service.reports.chart import chart_figure

    jobs, share = chart_figure(data).axes
    # Our own count: jobs and failed jobs per Shanghai day, straight from the database.
    per_day = sql(
        history,
        "SELECT date(created_at, '+8 hours'), count(*), sum(status = 'failed') FROM jobs WHERE IN_PERIOD "
        "GROUP BY 1 ORDER BY 1",
    )
    counted = {day: 100 * failed / total for day, total, failed in per_day}
    expected = [counted.get(day.isoformat(), math.nan) for day in data.days]
    (line,) = share.get_lines()
    assert list(line.get_ydata()) == pytest.approx(expected, nan_ok=True)
    assert any(0 < value < 100 for value in expected)  # the period has days with and without failures
    assert share.get_ylim() == (0, 100)
    assert (jobs.get_xlabel(), jobs.get_ylabel()) == ("日期 / date", "任务数 / jobs")
    assert share.get_ylabel() == "失败比例（%） / failed share (%)"


def test_markdown_has_the_key_numbers(files: ReportFiles, data: ReportData) -> None:
    assert files.markdown is not None
    text = files.markdown.read_text(encoding="utf-8")
    assert "共 15 项：完成 12 项，失败 3 项" in text
    assert "| image\\_corrupt |" in text and "| 2 |" in text
    assert "| 10:00–11:00 | 5 |" in text
    assert "抽样准确率 75.0%" in text
    assert "<script>" not in text and "\\<script\\>" in text  # escaped for viewers that render HTML
    assert f"({BASE_URL}/#history)" in text
    assert "![" in text and "周报_2025-03-03_2025-03-05.png" in text


def test_html_opens_in_chromium_with_its_images_and_no_requests(files: ReportFiles) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed")
    assert files.html is not None
    requests: list[str] = []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("request", lambda request: requests.append(request.url))
        page.route(
            "**/*", lambda route: route.abort() if route.request.url.startswith("http") else route.continue_()
        )
        page.goto(files.html.as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
        answers = page.locator("td.text").all_inner_texts()
        pwned = page.evaluate("window.pwned")
        browser.close()
    assert len(widths) == 13 and all(width and width > 0 for width in widths)  # chart + 12 thumbnails
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []
    assert HOSTILE_ANSWER in answers and pwned is None


def test_a_long_period_caps_the_items_table_but_never_the_csv(
    store: Store, history: History, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("service.reports.items.MAX_ITEMS", 5)
    report = ReportConfig(name="capped", outputs=["markdown", "csv"])
    files = write_report(store, history.config, report, SINCE, UNTIL, out_dir=tmp_path)
    assert files.markdown is not None and files.csv is not None and files.html is None and files.png is None
    text = files.markdown.read_text(encoding="utf-8")
    assert str(msg("report_items_more", more=7)) in text
    assert len(list(csv.DictReader(io.StringIO(files.csv.read_text(encoding="utf-8-sig"))))) == 15


def test_the_chart_falls_back_to_english_labels_without_a_cjk_font(
    data: ReportData, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.reports.chart import render_chart

    monkeypatch.setattr("service.reports.chart.cjk_font_path", lambda: None)
    with Image.open(io.BytesIO(render_chart(data))) as image:
        assert image.format == "PNG" and sum(image.convert("L").histogram()[:200]) > 5000
