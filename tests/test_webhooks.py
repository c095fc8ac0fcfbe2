"""`[[webhook]]` on a live service: real HTTP receivers on 127.0.0.1 check the HMAC signature of every
delivery; one answers 500 first and is retried until it takes it; every attempt is recorded and listed by
`GET /api/webhooks/deliveries` (admin); the secret appears in no log line."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bench.render import render_text_image
from service.config import Config, HttpConfig, ImagesConfig, StorageConfig
from service.config_webhooks import WebhookConfig
from service.webhooks import signature
from tests.conftest import InstrumentedBackend, wait_until
from tests.live import LiveService, running_service

KEY = "webhook-test-key-0123456789"
BEARER = {"Authorization": f"Bearer {KEY}"}
SECRET = "receiver-secret-abcdef-0123456789"
FLAKY_SECRET = "flaky-secret-abcdef-0123456789"


@dataclass
class Receiver:
    """A real HTTP server that keeps what it received and answers `failures` 500s first."""

    secret: str
    failures: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(receiver.secret.encode(), body, hashlib.sha256).hexdigest()
                valid = hmac.compare_digest(self.headers.get("X-Tuwen-Signature", ""), expected)
                with receiver.lock:
                    receiver.attempts += 1
                    fail = receiver.attempts <= receiver.failures
                    if valid and not fail:
                        receiver.received.append({"headers": dict(self.headers), "body": json.loads(body)})
                self.send_response(500 if fail else (204 if valid else 401))
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        with self.lock:
            return [item["body"]["event"] for item in self.received]


@dataclass
class Hooks:
    live: LiveService
    good: Receiver
    flaky: Receiver
    job_id: int


def ask(live: LiveService) -> int:
    buffer = io.BytesIO()
    render_text_image(["通知测试"], size=(500, 120), font_size=36).save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "写了什么？"}]
    reply = httpx.post(
        live.base_url + "/v1/chat/completions",
        json={"model": "tuwen", "messages": [{"role": "user", "content": content}]},
        headers=BEARER,
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    job = live.app.store.get_by_uid(reply.json()["id"].removeprefix("chatcmpl-"))
    assert job is not None
    return job.id


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory, ocr_engine: object) -> Iterator[Hooks]:
    good, flaky = Receiver(SECRET), Receiver(FLAKY_SECRET, failures=2)
    good.start()
    flaky.start()
    root = tmp_path_factory.mktemp("webhooks")
    config = Config(
        storage=StorageConfig(data_dir=root / "data"),
        http=HttpConfig(enabled=False, api_key=SecretStr(KEY)),
        images=ImagesConfig(),
        watch=[],
        webhook=[
            WebhookConfig(name="archive-system", url=good.url, secret=SecretStr(SECRET)),
            WebhookConfig(name="flaky", url=flaky.url, secret=SecretStr(FLAKY_SECRET), events=["job.done"]),
        ],
    )
    with running_service(config, lambda c: InstrumentedBackend(c, ocr_engine)) as live:
        yield Hooks(live, good, flaky, ask(live))
    for receiver in (good, flaky):
        assert receiver.server is not None
        receiver.server.shutdown()


def test_signature_is_the_hex_hmac_sha256_of_the_body() -> None:
    body = b'{"event":"job.done"}'
    assert signature(body, "k" * 16) == "sha256=" + hmac.new(b"k" * 16, body, hashlib.sha256).hexdigest()


def test_a_done_job_and_its_review_are_posted_signed_with_the_job(hooks: Hooks) -> None:
    with httpx.Client(base_url=hooks.live.base_url, headers=BEARER, timeout=30) as client:
        reviewed = client.post(f"/api/jobs/{hooks.job_id}/review", json={"verdict": "correct"})
    assert reviewed.status_code == 200
    wait_until(lambda: hooks.good.events() == ["job.done", "job.reviewed"], timeout=20)
    done, review = hooks.good.received
    assert done["body"]["job"]["id"] == hooks.job_id and done["body"]["job"]["status"] == "done"
    assert done["headers"]["X-Tuwen-Event"] == "job.done"
    assert done["headers"]["X-Tuwen-Delivery"] == done["body"]["delivery_id"]
    assert review["body"]["job"]["reviewed_by"] == "api-key"


def test_a_receiver_that_fails_first_gets_it_on_a_retry_and_every_attempt_is_recorded(hooks: Hooks) -> None:
    wait_until(lambda: hooks.flaky.events() == ["job.done"], timeout=30)  # 500, 500, then taken
    with httpx.Client(base_url=hooks.live.base_url, headers=BEARER, timeout=30) as client:
        listed = client.get("/api/webhooks/deliveries").json()
    flaky = next(item for item in listed["items"] if item["webhook"] == "flaky")
    assert (flaky["status"], flaky["attempts"], flaky["status_code"]) == ("delivered", 3, 204)
    assert flaky["event"] == "job.done" and flaky["job_id"] == hooks.job_id
    events = sorted(item["event"] for item in listed["items"] if item["webhook"] == "archive-system")
    assert events == ["job.done", "job.reviewed"]
    assert SECRET not in json.dumps(listed) and FLAKY_SECRET not in json.dumps(listed)


def test_deliveries_are_for_admins_only(hooks: Hooks) -> None:
    kiosk = httpx.get(hooks.live.base_url + "/api/webhooks/deliveries", timeout=30)
    assert kiosk.status_code == 401


def test_no_log_line_holds_a_secret(hooks: Hooks, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ask(hooks.live)
    wait_until(lambda: hooks.good.events().count("job.done") == 2, timeout=20)
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert SECRET not in text and FLAKY_SECRET not in text


def test_a_failed_job_is_posted_as_job_failed(hooks: Hooks) -> None:
    garbage = "data:image/png;base64," + base64.b64encode(b"not an image at all " * 8).decode()
    content = [{"type": "image_url", "image_url": {"url": garbage}}, {"type": "text", "text": "?"}]
    refused = httpx.post(
        hooks.live.base_url + "/v1/chat/completions",
        json={"model": "tuwen", "messages": [{"role": "user", "content": content}]},
        headers=BEARER,
        timeout=60,
    )
    assert refused.status_code in (400, 422)
    wait_until(lambda: "job.failed" in hooks.good.events(), timeout=20)
    failed = next(item for item in hooks.good.received if item["body"]["event"] == "job.failed")
    assert failed["body"]["job"]["status"] == "failed" and failed["body"]["job"]["error_code"]
    assert "job.failed" not in hooks.flaky.events()  # it asked for job.done only
