"""Reviewing answers on a real running service: corrections reach the JSON and XMP sidecars of folder
jobs, become searchable, and feed the accuracy statistics; samples hold only unreviewed done jobs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from service.config import Config
from service.sidecars.catalogue import read_catalogue
from tests.conftest import wait_until
from tests.live import LiveService, running_service

KEY = "review-test-key"
NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "tuwen": "https://tuwen.dev/ns/1.0/",
}
CORRECTION = "清代青花瓷瓶，约1890年"


@pytest.fixture
def service(
    make_config: Callable[..., Config], backend_factory: Callable[[Config], Any], tmp_path: Path
) -> Iterator[tuple[LiveService, httpx.Client, Path]]:
    config = make_config(watches=[{"name": "archive", "catalogue": True}], http={"api_key": SecretStr(KEY)})
    with (
        running_service(config, backend_factory) as live,
        httpx.Client(
            base_url=live.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
        ) as client,
    ):
        yield live, client, tmp_path / "inbox"


def drop(inbox: Path, scan_bytes: Callable[..., bytes], name: str, line: str) -> Path:
    path = inbox / name
    path.write_bytes(scan_bytes([line]))
    return path


def finished_jobs(client: httpx.Client, count: int) -> list[dict[str, Any]]:
    """Wait until `count` jobs are done or failed; return them newest first."""

    def ready() -> list[dict[str, Any]] | None:
        items = client.get("/api/jobs", params={"per_page": 200}).json()["items"]
        settled = [item for item in items if item["status"] in ("done", "failed")]
        return settled if len(settled) == count else None

    return wait_until(ready, timeout=90)  # type: ignore[return-value]


def sidecars(scan: Path) -> tuple[dict[str, Any], ET.Element]:
    data = json.loads(scan.with_name(scan.name + ".json").read_text(encoding="utf-8"))
    return data, ET.parse(scan.with_name(scan.name + ".xmp")).getroot()


def xmp_values(root: ET.Element, path: str) -> list[str]:
    return [element.text or "" for element in root.iterfind(path, NS)]


def review(client: httpx.Client, job_id: int, verdict: str, correction: str | None = None) -> httpx.Response:
    return client.post(f"/api/jobs/{job_id}/review", json={"verdict": verdict, "correction": correction})


def test_a_correction_is_written_into_the_sidecars_and_searchable(service, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    live, client, inbox = service
    scan = drop(inbox, scan_bytes, "vase.jpg", "瓷瓶 Vase")
    (job,) = finished_jobs(client, 1)
    wait_until(lambda: scan.with_name("vase.jpg.xmp").exists())
    model_answer = job["answer"]

    response = review(client, job["id"], "corrected", f"  {CORRECTION}\n")
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["review_status"] == "corrected" and summary["correction"] == CORRECTION
    assert summary["answer"] == model_answer  # the model's words are kept

    data, xmp = sidecars(scan)  # rewritten before the response was sent
    assert data["answer"] == model_answer and data["correction"] == CORRECTION
    assert data["review_status"] == "corrected" and data["reviewed_at"]
    assert xmp_values(xmp, ".//dc:description/rdf:Alt/rdf:li") == [CORRECTION, CORRECTION]
    assert xmp_values(xmp, ".//tuwen:Corrected") == ["True"]
    assert xmp_values(xmp, ".//tuwen:ModelAnswer") == [model_answer]
    # The catalogue is a log of answers, appended once per job: a review does not add a row.
    assert len(read_catalogue(inbox / "tuwen-catalogue.csv")) == 1

    for query in ("青花瓷", "瓷瓶", "1890"):
        found = client.get("/api/jobs", params={"q": query, "review": "corrected"}).json()
        assert [item["id"] for item in found["items"]] == [job["id"]]

    assert review(client, job["id"], "correct").status_code == 200
    data, xmp = sidecars(scan)
    assert data["answer"] == model_answer and data["correction"] is None
    assert data["review_status"] == "correct"
    assert xmp_values(xmp, ".//dc:description/rdf:Alt/rdf:li") == [model_answer, model_answer]
    assert xmp_values(xmp, ".//tuwen:Corrected") == ["False"]
    assert client.get("/api/jobs", params={"q": "青花瓷"}).json()["total"] == 0


def test_reviewing_an_older_answer_leaves_the_newer_sidecars(service, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    live, client, inbox = service
    scan = drop(inbox, scan_bytes, "map.jpg", "老地图")
    (first,) = finished_jobs(client, 1)
    drop(inbox, scan_bytes, "map.jpg", "新地图")  # replaced by a new scan under the same name: a second job
    newer, older = finished_jobs(client, 2)
    assert older["id"] == first["id"]
    wait_until(lambda: sidecars(scan)[0]["job_id"] == newer["uid"])
    assert review(client, older["id"], "corrected", CORRECTION).status_code == 200
    data, xmp = sidecars(scan)
    assert data["job_id"] == newer["uid"] and data["correction"] is None
    assert CORRECTION not in ET.tostring(xmp, encoding="unicode")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"verdict": "wrong"}, "history_bad_param"),
        ({"verdict": ""}, "history_bad_param"),
        ({"verdict": "corrected"}, "review_correction_missing"),
        ({"verdict": "corrected", "correction": "   "}, "review_correction_missing"),
        ({"verdict": "corrected", "correction": "长" * 20_001}, "review_correction_too_long"),
        ({"correction": "没有结论"}, "api_bad_request"),
    ],
)
def test_bad_reviews_are_400_in_both_languages(service, scan_bytes, body: dict[str, Any], code: str) -> None:  # type: ignore[no-untyped-def]
    live, client, inbox = service
    drop(inbox, scan_bytes, "x.jpg", "山水画")
    (job,) = finished_jobs(client, 1)
    response = client.post(f"/api/jobs/{job['id']}/review", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code and " / " in error["message"]
    assert client.get(f"/api/jobs/{job['id']}").json()["review_status"] == "unreviewed"


def test_only_done_jobs_can_be_reviewed_and_unknown_ones_are_404(service, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    live, client, inbox = service
    (inbox / "broken.jpg").write_bytes(scan_bytes()[:1500])
    (failed,) = finished_jobs(client, 1)
    assert failed["status"] == "failed"
    refused = review(client, failed["id"], "correct")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "review_not_done"
    missing = review(client, 999_999, "correct")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"


def test_stats_and_samples(service, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    live, client, inbox = service
    lines = ["青铜鼎", "全家合影", "山水画", "族谱", "地契"]
    for index, line in enumerate(lines):
        drop(inbox, scan_bytes, f"scan{index}.jpg", line)
    (inbox / "broken.jpg").write_bytes(scan_bytes()[:1500])
    jobs = finished_jobs(client, 6)
    done = [job["id"] for job in jobs if job["status"] == "done"]
    failed = [job["id"] for job in jobs if job["status"] == "failed"]
    assert len(done) == 5 and len(failed) == 1

    assert client.get("/api/review/stats").json() == {
        "done": 5,
        "reviewed": 0,
        "reviewed_share": 0.0,
        "correct": 0,
        "corrected": 0,
        "accuracy": None,
        "ci_low": None,
        "ci_high": None,
        "confidence": 0.95,
    }
    sample = client.post("/api/review/sample", json={"n": 3}).json()["items"]
    assert len({item["id"] for item in sample}) == 3 and {item["id"] for item in sample} <= set(done)

    for job_id in done[:3]:
        assert review(client, job_id, "correct").status_code == 200
    assert review(client, done[3], "corrected", "一座鼎").status_code == 200
    stats = client.get("/api/review/stats").json()
    assert (stats["done"], stats["reviewed"], stats["correct"], stats["corrected"]) == (5, 4, 3, 1)
    assert stats["reviewed_share"] == pytest.approx(0.8)
    assert stats["accuracy"] == pytest.approx(0.75)
    # Wilson, z = 1.95996, n = 4, p = 0.75 (by hand):
    #   centre = (p + z²/2n) / (1 + z²/n) = (0.75 + 0.480182) / 1.960365 = 0.627527
    #   half   = z·√(p(1−p)/n + z²/4n²) / (1 + z²/n) = 1.95996 × √0.106898 / 1.960365 = 0.326886
    assert stats["ci_low"] == pytest.approx(0.300641, abs=1e-5)
    assert stats["ci_high"] == pytest.approx(0.954413, abs=1e-5)

    everything = client.post("/api/review/sample", json={"n": 200}).json()["items"]
    assert [item["id"] for item in everything] == [done[4]]  # only the unreviewed done job
    assert everything[0]["review_status"] == "unreviewed"
    assert [item["id"] for item in client.post("/api/review/sample").json()["items"]] == [done[4]]

    assert review(client, done[0], "unreviewed").status_code == 200  # taking a verdict back
    stats = client.get("/api/review/stats").json()
    assert (stats["reviewed"], stats["correct"]) == (3, 2)


@pytest.mark.parametrize("n", [0, -1, 201])
def test_sample_size_is_bounded(service, n: int) -> None:  # type: ignore[no-untyped-def]
    live, client, inbox = service
    response = client.post("/api/review/sample", json={"n": n})
    assert response.status_code == 400 and response.json()["error"]["code"] == "history_bad_param"
