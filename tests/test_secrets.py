"""A secret never leaves the process: not stored, logged, shown in /health, returned, exported or reported.

Upstream servers echo keys back in their error text; a stand-in vLLM server does exactly that here, and the
key is looked for everywhere a person or a program could read it afterwards.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from bench.fake_openai import MODEL, FakeOpenAIServer
from service.logs import TuwenFormatter
from tests.conftest import wait_until
from tests.live import LiveService, running_service

REMOTE_KEY = "sk-remote-9f8e7d6c5b4a-very-secret"
HTTP_KEY = "tuwen-http-key-1234567890"
HEADERS = {"Authorization": f"Bearer {HTTP_KEY}"}


@pytest.fixture
def remote() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def live(make_config, remote: FakeOpenAIServer) -> Iterator[LiveService]:  # type: ignore[no-untyped-def]
    config = make_config(
        model={"backend": "openai"},
        openai={"base_url": remote.url, "api_key": SecretStr(REMOTE_KEY), "model": MODEL, "max_retries": 0},
        http={"api_key": SecretStr(HTTP_KEY)},
    )
    from service.redact import register

    register([REMOTE_KEY, HTTP_KEY])  # what `tuwen serve` does at start from the config's secrets
    with running_service(config) as running:
        yield running


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "white").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_an_upstream_error_quoting_the_key_is_scrubbed_everywhere(  # type: ignore[no-untyped-def]
    live: LiveService, remote: FakeOpenAIServer, tmp_path: Path
) -> None:
    remote.error_message = f"Incorrect API key provided: {REMOTE_KEY}. Check it at https://example/keys"
    remote.plan = [400]
    parts = [{"type": "text", "text": "写了什么？"}, {"type": "image_url", "image_url": {"url": _png()}}]
    response = httpx.post(
        live.base_url + "/v1/chat/completions",
        json={"model": "tuwen", "messages": [{"role": "user", "content": parts}]},
        headers=HEADERS,
        timeout=60,
    )
    job = live.app.store.list_jobs(limit=1)[0]
    detail = httpx.get(live.base_url + f"/api/jobs/{job.id}", headers=HEADERS, timeout=10).text
    export = httpx.get(live.base_url + "/api/jobs/export.csv", headers=HEADERS, timeout=10).text
    health = httpx.get(live.base_url + "/health", timeout=10).text
    assert response.status_code == 422
    assert "Incorrect API key provided: ***" in response.text
    for seen in (response.text, detail, export, health, job.error or "", json.dumps(job.error_params)):
        assert REMOTE_KEY not in seen and HTTP_KEY not in seen
    from service.reports.adhoc import run_reports

    written = run_reports(live.app.config, name=None, since=None, until=None, out_dir=tmp_path / "report")
    for _, files in written:
        for path in files.paths:
            assert REMOTE_KEY.encode() not in Path(path).read_bytes()


def test_a_model_server_refusing_the_key_is_shown_in_health_without_it(make_config, remote) -> None:  # type: ignore[no-untyped-def]
    remote.models_status = 401
    remote.error_message = f"invalid api key {REMOTE_KEY}"
    config = make_config(
        model={"backend": "openai"},
        openai={"base_url": remote.url, "api_key": SecretStr(REMOTE_KEY), "model": MODEL},
    )
    from service.redact import register

    register([REMOTE_KEY])
    with running_service(config) as live:
        health = wait_until(
            lambda: (r := httpx.get(live.base_url + "/health", timeout=5)).status_code == 503 and r
        )
    text = health.text  # type: ignore[attr-defined]
    assert "invalid api key ***" in text and REMOTE_KEY not in text


def test_the_log_formatter_scrubs_messages_and_tracebacks() -> None:
    from service.redact import register

    register([REMOTE_KEY])
    formatter = TuwenFormatter("%(levelname)s %(name)s: %(message)s")
    try:
        raise RuntimeError(f"connect to https://api.example/v1?key={REMOTE_KEY} failed")
    except RuntimeError:
        record = logging.LogRecord(
            "tuwen.generate", logging.ERROR, __file__, 1, "request with %s", (REMOTE_KEY,), sys.exc_info()
        )
    text = formatter.format(record)
    assert REMOTE_KEY not in text
    assert "request with ***" in text and "key=*** failed" in text and "Traceback" in text


def test_tuwen_serve_never_logs_its_secrets(tmp_path: Path, remote: FakeOpenAIServer) -> None:
    import os
    import signal
    import subprocess

    from tests.test_serve import REPO, _free_port, _write_config

    remote.models_status = 401
    remote.error_message = f"the key {REMOTE_KEY} is revoked"
    port = _free_port()
    config = _write_config(tmp_path, port)
    config.write_text(
        config.read_text(encoding="utf-8")
        + f'\n[model]\nbackend = "openai"\n[openai]\nbase_url = "{remote.url}"\nmodel = "{MODEL}"\n',
        encoding="utf-8",
    )
    env = {**os.environ, "TUWEN_OPENAI__API_KEY": REMOTE_KEY, "TUWEN_HTTP__API_KEY": HTTP_KEY}
    log = tmp_path / "serve.log"
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "-c", str(config)],
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "revoked" in log.read_text(encoding="utf-8", errors="replace"), timeout=60)
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=40)
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "the key *** is revoked" in text
    assert REMOTE_KEY not in text and HTTP_KEY not in text and REMOTE_KEY not in health.text
