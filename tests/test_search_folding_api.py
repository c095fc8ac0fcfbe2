"""Folded search through the real history API: scans in traditional script and full width, read by the
real OCR backend in a running service (uvicorn on 127.0.0.1, real SQLite), found by simplified and
half-width queries; a traditional correction posted through the review API is found the same way."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from pydantic import SecretStr

from bench.render import render_text_image
from db.models import Job
from service.config import Config, HttpConfig, ImagesConfig, StorageConfig
from service.events import Event
from tests.conftest import InstrumentedBackend
from tests.live import running_service

KEY = "folding-test-key"


@dataclass
class Seeded:
    client: httpx.Client
    jobs: dict[str, Job]  # by label


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, ocr_engine: object) -> Iterator[Seeded]:
    root = tmp_path_factory.mktemp("folding-api")
    config = Config(
        storage=StorageConfig(data_dir=root / "data"),
        http=HttpConfig(enabled=False, api_key=SecretStr(KEY)),
        images=ImagesConfig(),
    )
    scans = {"notice": "臺北縣政府佈告 第三號", "label": "編號ＡＢＣ１２３", "painting": "山水画 清代"}
    with running_service(config, lambda c: InstrumentedBackend(c, ocr_engine)) as live:
        jobs = {}
        for name, line in scans.items():
            path = root / f"{name}.jpg"
            render_text_image([line], size=(600, 300), font_size=40).save(path, "JPEG", quality=90)
            event = Event(source="api", question="请读出文字", images=(str(path),))
            jobs[name] = live.app.queue.result(live.app.queue.submit(event).uid).result(timeout=120)
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=live.base_url, headers=headers, timeout=30) as client:
            yield Seeded(client, jobs)


def search(seeded: Seeded, q: str) -> list[int]:
    response = seeded.client.get("/api/jobs", params={"q": q})
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_the_scans_were_read_in_their_own_script(seeded: Seeded) -> None:
    assert {name: job.status for name, job in seeded.jobs.items()} == dict.fromkeys(seeded.jobs, "done")
    assert "臺北縣政府佈告" in (seeded.jobs["notice"].ocr_text or "")
    assert "編號" in (seeded.jobs["label"].ocr_text or "")


@pytest.mark.parametrize(
    ("query", "label"),
    [
        ("县政府", "notice"),  # simplified query, traditional scan
        ("布告", "notice"),
        ("臺北縣政府", "notice"),  # the scan's own script still works
        ("台北县政府布告 第三号", "notice"),  # two terms, both folded
        ("县", "notice"),  # one character: the fallback, on the folded text
        ("编号", "label"),
        ("abc123", "label"),  # half-width query, full-width scan
        ("ＡＢＣ１２３", "label"),
    ],
)
def test_simplified_and_half_width_queries_find_the_scans(seeded: Seeded, query: str, label: str) -> None:
    assert search(seeded, query) == [seeded.jobs[label].id]


def test_results_show_the_original_text(seeded: Seeded) -> None:
    item = seeded.client.get("/api/jobs", params={"q": "县政府"}).json()["items"][0]
    assert item["ocr_text"] == seeded.jobs["notice"].ocr_text and "縣政府" in item["ocr_text"]
    assert "search_text" not in item


def test_a_traditional_correction_posted_by_staff_is_found_by_a_simplified_query(seeded: Seeded) -> None:
    job = seeded.jobs["painting"]
    assert search(seeded, "乾隆年间") == []
    response = seeded.client.post(
        f"/api/jobs/{job.id}/review", json={"verdict": "corrected", "correction": "乾隆年間山水畫，見縣誌"}
    )
    assert response.status_code == 200, response.text
    assert search(seeded, "乾隆年间") == [job.id]
    assert search(seeded, "县志") == [job.id]
    assert search(seeded, "山水画") == [job.id]  # the OCR text beside it is still found
