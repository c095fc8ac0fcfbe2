"""A remote model kept busy: continuous dispatch, interactive questions beside a backlog, several servers,
the reasoning switch and extra body fields — a real service against local stand-ins for vLLM (aiohttp)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from bench.fake_openai import MODEL, FakeOpenAIServer
from bench.render import render_text_image
from db.models import JobStatus
from service.composition import build_service
from service.http.health import health_report
from tests.conftest import wait_until
from tests.live import running_service

KEY = "k" * 32
HEADERS = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def remote() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def second() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer()
    server.start()
    yield server
    server.stop()


def _config(
    make_config: Any,
    urls: list[str],
    concurrency: int,
    watches: list[dict[str, Any]] | None = None,
    **openai: Any,
) -> Any:
    return make_config(
        [{}] if watches is None else watches,
        model={"backend": "openai"},
        openai={"base_urls": urls, "model": MODEL, "max_retries": 1, "concurrency": concurrency, **openai},
        http={"api_key": SecretStr(KEY)},
    )


def _scans(folder: Path, count: int, label: str = "第") -> list[Path]:
    paths = []
    for n in range(count):
        path = folder / f"scan{n:02d}.png"  # distinct content: identical scans would share one answer
        render_text_image([f"{label} {n} 号"], size=(160, 60), font_size=20).save(path)
        paths.append(path)
    return paths


def _sidecar(path: Path) -> dict[str, Any] | None:
    side = path.with_name(path.name + ".json")
    return json.loads(side.read_text(encoding="utf-8")) if side.exists() else None


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "white").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _ask(base_url: str, text: str = "这是什么？", **extra: Any) -> httpx.Response:
    parts = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": _png()}}]
    body = {"model": "tuwen", "messages": [{"role": "user", "content": parts}], **extra}
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=HEADERS, timeout=60)


def test_a_backlog_keeps_exactly_concurrency_requests_in_flight(
    make_config: Any, remote: FakeOpenAIServer
) -> None:
    remote.latency = 0.4
    config = _config(make_config, [remote.url], concurrency=4)
    scans = _scans(config.watch[0].path, 12)
    app = build_service(config)
    app.start()
    try:
        wait_until(lambda: all(_sidecar(p) for p in scans), timeout=60)
    finally:
        app.stop()
    # Four at once, never more (the batch size of 4 would also give four, so the next check matters too).
    assert remote.max_in_flight == 4
    assert all(_sidecar(p)["status"] == "done" for p in scans)  # type: ignore[index]


def test_an_answer_still_being_recorded_leaves_its_slot_to_the_next_request(
    make_config: Any, remote: FakeOpenAIServer
) -> None:
    # Recording the first answer is held up (a slow share under the sidecars, say). Its slot is free as
    # soon as the answer arrived: the server keeps getting two requests at a time meanwhile, not one.
    remote.latency = 0.3
    config = _config(make_config, [remote.url], concurrency=2)
    scans = _scans(config.watch[0].path, 10)
    release, holding = threading.Event(), threading.Event()

    def slow_recording(job: Any) -> None:
        if not holding.is_set():
            holding.set()
            release.wait(30)

    app = build_service(config)
    app.queue.add_finished_listener(slow_recording)
    app.start()
    try:
        assert holding.wait(30)
        remote.max_in_flight, before = 0, remote.answered
        wait_until(lambda: remote.answered >= before + 4, timeout=30)
        most_while_held = remote.max_in_flight
        release.set()
        wait_until(lambda: all(_sidecar(p) for p in scans), timeout=60)
    finally:
        release.set()
        app.stop()
    assert most_while_held == 2
    assert all(_sidecar(p)["status"] == "done" for p in scans)  # type: ignore[index]


def test_no_batch_barrier_the_slowest_request_holds_only_its_own_slot(
    make_config: Any, remote: FakeOpenAIServer
) -> None:
    # The first request takes 6 s; with batches of 4 the other three slots would wait for it. Continuous
    # dispatch answers the other 11 scans meanwhile.
    remote.plan = [("sleep", 6.0)]
    config = _config(make_config, [remote.url], concurrency=4)
    scans = _scans(config.watch[0].path, 12)
    app = build_service(config)
    app.start()
    try:
        wait_until(lambda: sum(1 for p in scans if _sidecar(p)) >= 11, timeout=30)
        still_out = [p for p in scans if not _sidecar(p)]
    finally:
        app.stop()
    assert len(still_out) <= 1 and remote.answered >= 11


def test_an_interactive_question_goes_out_while_the_backlog_fills_every_slot(
    make_config: Any, remote: FakeOpenAIServer
) -> None:
    remote.latency = 1.5
    config = _config(make_config, [remote.url], concurrency=2)
    scans = _scans(config.watch[0].path, 10)
    with running_service(config) as live:
        wait_until(lambda: remote.in_flight == 2, timeout=30)
        started = time.monotonic()
        response = _ask(live.base_url)
        waited = time.monotonic() - started
        backlog_done = sum(1 for p in scans if _sidecar(p))
    assert response.status_code == 200, response.text
    assert remote.max_in_flight == 3  # two backlog requests and the question, at once
    # It did not queue behind the backlog: most scans were still unanswered when the answer came.
    assert backlog_done <= 4 and waited < 10 * remote.latency / 2


def test_simultaneous_api_questions_reach_the_server_together(
    make_config: Any, remote: FakeOpenAIServer
) -> None:
    remote.latency = 1.0
    config = _config(make_config, [remote.url], concurrency=8, watches=[])
    with running_service(config) as live:
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda n=n: results.append(_ask(live.base_url, f"问题 {n}").status_code))
            for n in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert results == [200] * 8
    assert remote.max_in_flight == 8


def test_requests_are_shared_between_servers_by_least_in_flight(
    make_config: Any, remote: FakeOpenAIServer, second: FakeOpenAIServer
) -> None:
    remote.latency = second.latency = 0.3
    config = _config(make_config, [remote.url, second.url], concurrency=8)
    scans = _scans(config.watch[0].path, 24)
    app = build_service(config)
    app.start()
    try:
        wait_until(lambda: all(_sidecar(p) for p in scans), timeout=60)
    finally:
        app.stop()
    assert remote.answered + second.answered == 24
    assert remote.answered >= 8 and second.answered >= 8
    assert remote.max_in_flight <= 5 and second.max_in_flight <= 5  # 8 in flight, shared


def test_a_server_that_refuses_connections_is_left_out_and_health_says_so(
    make_config: Any, remote: FakeOpenAIServer, second: FakeOpenAIServer
) -> None:
    second.stop()  # nothing listens there any more: connections are refused
    dead = second.url
    config = _config(make_config, [dead, remote.url], concurrency=4)
    scans = _scans(config.watch[0].path, 8)
    with running_service(config) as live:
        wait_until(lambda: all(_sidecar(p) for p in scans), timeout=60)
        health = httpx.get(f"{live.base_url}/health", timeout=10)
        metrics = httpx.get(f"{live.base_url}/metrics", headers=HEADERS, timeout=10).text
    assert all(_sidecar(p)["status"] == "done" for p in scans)  # type: ignore[index]
    assert remote.answered == 8
    assert health.status_code == 200  # one of two servers answers: degraded, not down
    endpoints = {c["name"]: c for c in health.json()["components"] if c["kind"] == "model-endpoint"}
    assert endpoints[remote.url.rstrip("/")]["state"] == "running"
    assert endpoints[dead.rstrip("/")]["state"] == "unavailable" and endpoints[dead.rstrip("/")]["error"]
    assert f'tuwen_source_up{{kind="model-endpoint",name="{dead.rstrip("/")}"}} 0.0' in metrics
    assert "tuwen_endpoint_in_flight" in metrics


def test_when_no_server_answers_health_is_503(make_config: Any, remote: FakeOpenAIServer) -> None:
    remote.models_status = 503
    config = _config(make_config, [remote.url], concurrency=2, watches=[])
    app = build_service(config)
    app.start()
    try:
        wait_until(lambda: app.worker.error is not None, timeout=30)
        status, body = health_report(app.http_context())
    finally:
        app.stop()
    assert status == 503 and "HTTP 503" in body["error"]


def test_thinking_is_off_for_folders_unless_the_watch_or_the_request_asks(
    make_config: Any, remote: FakeOpenAIServer, tmp_path: Path
) -> None:
    thinking_folder = tmp_path / "thinking"
    thinking_folder.mkdir()
    watches = [{}, {"path": thinking_folder, "name": "deep", "thinking": True}]
    config = _config(
        make_config,
        [remote.url],
        concurrency=2,
        watches=watches,
        extra_body={"top_k": 20, "chat_template_kwargs": {"custom": 1}},
    )
    plain = _scans(config.watch[0].path, 1)[0]
    deep = _scans(thinking_folder, 1, label="深")[0]
    with running_service(config) as live:
        wait_until(lambda: _sidecar(plain) and _sidecar(deep), timeout=60)
        asked = _ask(live.base_url, "想一想", chat_template_kwargs={"enable_thinking": True})
    assert asked.status_code == 200
    flags = {}
    for request in remote.chat_requests:
        body = request["json"]
        text = next(p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text")
        assert body["top_k"] == 20 and body["chat_template_kwargs"]["custom"] == 1  # extra_body merged
        flags.setdefault(text, []).append(body["chat_template_kwargs"]["enable_thinking"])
    assert flags.pop("想一想") == [True]  # the API request asked for it
    assert sorted(flags[config.watch[0].prompt]) == [False, True]  # the default watch, and "deep"


def test_a_stuck_request_among_many_is_retried_alone(make_config: Any, remote: FakeOpenAIServer) -> None:
    remote.plan = [("sleep", 20.0)]
    config = _config(make_config, [remote.url], concurrency=4)
    config.model = config.model.model_copy(update={"job_timeout_seconds": 2.0})
    scans = _scans(config.watch[0].path, 6)
    app = build_service(config)
    app.start()
    try:
        wait_until(lambda: all(_sidecar(p) for p in scans), timeout=60)
        jobs = app.store.list_jobs(limit=20)
    finally:
        app.stop()
    assert all(job.status == JobStatus.DONE for job in jobs) and len(jobs) == 6
    detail = [(j.file_path, j.timeouts, j.attempts, j.started_at, j.finished_at) for j in jobs]
    assert sorted(job.timeouts for job in jobs) == [0, 0, 0, 0, 0, 1], (detail, remote.answered)
