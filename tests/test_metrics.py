"""GET /metrics, parsed with prometheus-client's own text parser, after real jobs through a real service."""

from __future__ import annotations

import base64
import shutil
import sys
import types
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from service.events import Event, Priority
from service.http import metrics as metrics_module
from tests.conftest import wait_until
from tests.live import LiveService, running_service

KEY = "metrics-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def scrape(live: LiveService) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    response = httpx.get(live.base_url + "/metrics", headers=AUTH, timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """One sample's value, 0 when the series does not exist (counters start absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def chat(
    live: LiveService, image: bytes | None, *, stream: bool = False, headers: dict[str, str] | None = None
) -> httpx.Response:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "写了什么？"}]
    if image is not None:
        url = "data:image/jpeg;base64," + base64.b64encode(image).decode()
        parts.append({"type": "image_url", "image_url": {"url": url}})
    body = {"model": "tuwen", "messages": [{"role": "user", "content": parts}], "stream": stream}
    return httpx.post(
        live.base_url + "/v1/chat/completions", json=body, headers={**AUTH, **(headers or {})}, timeout=30
    )


@pytest.fixture
def live(make_config, backend_factory) -> Iterator[LiveService]:  # type: ignore[no-untyped-def]
    config = make_config(http={"api_key": SecretStr(KEY)})
    with running_service(config, backend_factory) as running:
        yield running


def test_counts_match_what_was_done(live: LiveService, scan_bytes, tmp_path) -> None:  # type: ignore[no-untyped-def]
    scan = scan_bytes(["指标测试"])
    source = tmp_path / "scan.jpg"
    source.write_bytes(scan)
    shutil.copy(source, live.app.config.watch[0].path / "scan.jpg")  # one folder job
    assert chat(live, scan).status_code == 200
    assert chat(live, scan, stream=True).status_code == 200
    assert chat(live, scan, headers={"X-Tuwen-Source": "kiosk"}).status_code == 200
    assert chat(live, b"not an image").status_code == 422
    assert chat(live, scan, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(live.base_url + "/v1/chat/completions", content=b"{", headers=AUTH).status_code == 400
    wait_until(lambda: live.app.store.status_counts().get("done") == 4, timeout=30)
    samples = scrape(live)
    jobs = live.app.store.list_jobs(limit=100)

    assert value(samples, "tuwen_requests_total", source="api", status="200") == 2
    assert value(samples, "tuwen_requests_total", source="kiosk", status="200") == 1
    assert value(samples, "tuwen_requests_total", source="api", status="422") == 1
    assert value(samples, "tuwen_requests_total", source="api", status="401") == 1
    assert value(samples, "tuwen_requests_total", source="api", status="400") == 1
    assert value(samples, "tuwen_rejections_total", reason="bad_image") == 1
    assert value(samples, "tuwen_rejections_total", reason="unauthorized") == 1
    assert value(samples, "tuwen_rejections_total", reason="invalid_request") == 1
    assert value(samples, "tuwen_jobs_finished_total", source="api", status="done") == 2
    assert value(samples, "tuwen_jobs_finished_total", source="api", status="failed") == 1
    assert value(samples, "tuwen_jobs_finished_total", source="watch", status="done") == 1
    assert value(samples, "tuwen_job_latency_seconds_count", source="watch") == 1
    assert value(samples, "tuwen_job_latency_seconds_count", source="api") == 3
    assert value(samples, "tuwen_job_latency_seconds_count", source="kiosk") == 1
    assert value(samples, "tuwen_time_to_first_token_seconds_count", source="api") == 2
    assert value(samples, "tuwen_time_to_first_token_seconds_count", source="kiosk") == 1
    # OCR reads characters, it generates nothing: no tokens or tokens per second are claimed for it.
    for label in ("api", "watch", "kiosk"):
        assert [j.answer_kind for j in jobs if j.source == label and j.status == "done"] == ["ocr"] * len(
            [j for j in jobs if j.source == label and j.status == "done"]
        )
        assert value(samples, "tuwen_generated_tokens_total", source=label) == 0
    assert value(samples, "tuwen_tokens_per_second_count") == 0
    # Queue wait and the worker's own time are told apart.
    assert value(samples, "tuwen_job_queue_wait_seconds_count", source="api") == 2
    assert value(samples, "tuwen_job_inference_seconds_count", source="api") == 2
    assert value(samples, "tuwen_job_inference_seconds_count", source="watch") == 1
    assert value(samples, "tuwen_worker_up") == 1
    assert value(samples, "process_resident_memory_bytes") > 50e6
    assert value(samples, "process_open_fds") > 0
    build = [labels for (name, labels) in samples if name == "tuwen_build_info"]
    assert build and dict(build[0])["backend"] == "ocr" and dict(build[0])["version"]
    assert [value(samples, "tuwen_queue_depth", priority=p) for p in ("interactive", "cli", "backlog")] == [
        0,
        0,
        0,
    ]


def test_queue_depth_is_read_at_scrape_time(live: LiveService) -> None:
    # Interactive jobs are claimed one at a time (others in batches), so exactly one runs and two wait.
    live.app.worker.backend.delay = 1.0  # type: ignore[union-attr]
    event = Event(source="telegram", question="q", images=(), priority=Priority.INTERACTIVE)
    uids = [live.app.queue.submit(event).uid for _ in range(3)]
    wait_until(lambda: live.app.store.status_counts().get("running") == 1, timeout=10)
    busy = scrape(live)
    for uid in uids:
        live.app.queue.result(uid).result(timeout=10)
    idle = scrape(live)
    assert value(busy, "tuwen_queue_depth", priority="interactive") == 2
    assert value(idle, "tuwen_queue_depth", priority="interactive") == 0


def test_each_app_has_its_own_registry(make_config, backend_factory, live: LiveService) -> None:  # type: ignore[no-untyped-def]
    other_config = make_config(http={"api_key": SecretStr(KEY)})
    other_config.storage.data_dir = other_config.storage.data_dir.parent / "other-data"
    with running_service(other_config, backend_factory) as other:
        assert chat(other, None).status_code == 200
        assert value(scrape(other), "tuwen_requests_total", source="api", status="200") == 1
        assert value(scrape(live), "tuwen_requests_total", source="api", status="200") == 0


def test_worker_down_and_no_gpu_gauge_without_cuda(live: LiveService) -> None:
    live.app.worker.state = "dead"  # what the supervisor sets after too many crashes
    samples = scrape(live)
    live.app.worker.state = "ready"
    assert value(samples, "tuwen_worker_up") == 0
    assert not [name for name, _ in samples if name.startswith("tuwen_gpu_memory")]


def test_gpu_memory_is_read_only_from_an_initialised_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: True,
        device_count=lambda: 2,
        memory_reserved=lambda index: 1_000 * (index + 1),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    family = metrics_module._gpu_memory()
    monkeypatch.setattr(cuda, "is_initialized", lambda: False)
    untouched = metrics_module._gpu_memory()
    assert family is not None and [(s.labels, s.value) for s in family.samples] == [
        ({"device": "0"}, 1000.0),
        ({"device": "1"}, 2000.0),
    ]
    assert untouched is None
