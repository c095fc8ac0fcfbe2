"""The Reports tab's 「生成报告」 over real HTTP: `POST /api/reports/generate` writes a report for any
days (by default yesterday in `[http] timezone`) through the same `write_report` the scheduler uses, and
`GET /api/reports` lists it and offers the default period."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from pydantic import SecretStr

from bench.render import render_text_image
from db.models import Job
from service.config import Config, HttpConfig, ImagesConfig, ReportConfig, StorageConfig
from service.events import Event
from service.reports.adhoc import yesterday
from tests.conftest import InstrumentedBackend
from tests.live import LiveService, running_service

KEY = "report-generate-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
SHANGHAI = ZoneInfo("Asia/Shanghai")


@dataclass
class Service:
    live: LiveService
    client: httpx.Client
    job_id: int  # a done job submitted yesterday noon, Shanghai time


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, ocr_engine: object) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("report-generate")
    scan = root / "scan.jpg"
    render_text_image(["昨日档案 Yesterday"], size=(600, 200), font_size=40).save(scan, "JPEG")
    config = Config(
        storage=StorageConfig(data_dir=root / "data"),
        http=HttpConfig(enabled=False, api_key=SecretStr(KEY), timezone="Asia/Shanghai"),
        images=ImagesConfig(),
        report=[ReportConfig(name="日报"), ReportConfig(name="周报", period="week")],
    )
    with running_service(config, lambda c: InstrumentedBackend(c, ocr_engine)) as live:
        queue = live.app.queue
        job = queue.result(queue.submit(Event(source="api", question="?", images=(str(scan),))).uid)
        done = job.result(timeout=120)
        noon = datetime.combine(datetime.now(SHANGHAI).date() - timedelta(days=1), time(12), tzinfo=SHANGHAI)
        with live.app.store.write_session() as session:
            row = session.get(Job, done.id)
            assert row is not None
            row.created_at = noon.astimezone(UTC)
        with httpx.Client(base_url=live.base_url, headers=AUTH, timeout=60) as client:
            yield Service(live, client, done.id)


def test_by_default_yesterday_is_written_listed_and_offered(service: Service) -> None:
    day = (datetime.now(SHANGHAI).date() - timedelta(days=1)).isoformat()
    response = service.client.post("/api/reports/generate", json={})
    assert response.status_code == 200, response.text
    item = response.json()["item"]
    assert (item["name"], item["stamp"]) == ("日报", day)  # the first configured report, yesterday
    assert {file["kind"] for file in item["files"]} == {"html", "markdown", "csv", "png"}
    (table,) = [file for file in item["files"] if file["kind"] == "csv"]
    rows = list(csv.DictReader(io.StringIO(service.client.get(table["url"]).content.decode("utf-8-sig"))))
    assert [row["id"] for row in rows] == [str(service.job_id)]
    listing = service.client.get("/api/reports").json()
    assert item in listing["items"]
    assert listing["default_period"] == {"date_from": day, "date_to": day, "timezone": "Asia/Shanghai"}
    assert listing["names"] == ["日报", "周报"]


def test_any_period_of_any_report_can_be_written(service: Service) -> None:
    body = {"name": "周报", "date_from": "2026-02-01", "date_to": "2026-02-07"}
    response = service.client.post("/api/reports/generate", json=body)
    assert response.status_code == 200, response.text
    item = response.json()["item"]
    assert (item["name"], item["stamp"]) == ("周报", "2026-02-01_2026-02-07")
    folder = service.live.app.config.storage.data_dir / "reports" / "周报" / "2026-02-01_2026-02-07"
    assert sorted(path.suffix for path in folder.iterdir()) == [".csv", ".html", ".md", ".png"]
    (page,) = [file for file in item["files"] if file["kind"] == "html"]
    assert "2026-02-01 – 2026-02-07" in service.client.get(page["url"]).text


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"date_from": "2026-03-07", "date_to": "2026-03-01"}, "report_bad_range"),
        ({"date_from": "2026-13-01"}, "history_bad_date"),
        ({"date_to": "20260301"}, "history_bad_date"),
        ({"name": "月报"}, "report_unknown_name"),
        ({"date_from": "2024-01-01", "date_to": "2025-12-31"}, "report_range_too_long"),
    ],
)
def test_bad_requests_are_400_in_both_languages(service: Service, body: dict[str, str], code: str) -> None:
    response = service.client.post("/api/reports/generate", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code and " / " in error["message"]


def test_generating_needs_the_full_key(service: Service) -> None:
    anonymous = httpx.post(service.live.base_url + "/api/reports/generate", json={}, timeout=10)
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    ("moment", "zone", "day"),
    [
        (datetime(2026, 3, 1, 20, 0, tzinfo=UTC), "Asia/Shanghai", date(2026, 3, 1)),  # 2nd, 04:00
        (datetime(2026, 3, 1, 20, 0, tzinfo=UTC), "UTC", date(2026, 2, 28)),
        (datetime(2026, 3, 1, 15, 59, tzinfo=UTC), "Asia/Shanghai", date(2026, 2, 28)),  # 1st, 23:59
    ],
)
def test_yesterday_is_the_day_before_today_in_the_institutions_zone(
    moment: datetime, zone: str, day: date
) -> None:
    assert yesterday(zone, moment) == day
