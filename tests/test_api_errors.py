"""Every refusal of the chat API, over real HTTP, in OpenAI's error shape with the bilingual message.

The service runs the real OCR backend (tests/conftest.py), slowed or failing on demand at that boundary.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image
from pydantic import SecretStr

from service.config import Config
from service.errors import PermanentError
from service.http.auth import Auth, Scope
from service.messages import msg
from tests import documents
from tests.conftest import wait_until
from tests.live import LiveService, running_service

KEY = "s3cret"
CJK = re.compile(r"[\u4e00-\u9fff]")


def chat(live: LiveService, body: Any = None, *, raw: bytes | None = None, **kwargs: Any) -> httpx.Response:
    """POST /v1/chat/completions with the full key (unless headers say otherwise)."""
    headers = {"Authorization": f"Bearer {KEY}", **kwargs.pop("headers", {})}
    if raw is None and body is not None:
        raw = json.dumps(body).encode()
    return httpx.post(
        live.base_url + "/v1/chat/completions", content=raw, headers=headers, timeout=30, **kwargs
    )


def ask(*image_urls: str, text: str = "写了什么？") -> dict[str, Any]:
    """A one-turn chat body."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
    return {"model": "tuwen", "messages": [{"role": "user", "content": parts}]}


def data_url(payload: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(payload).decode()


def png(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "white").save(buffer, "PNG")
    return buffer.getvalue()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """OpenAI's error shape, the catalogue code, and a message in Chinese then English."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    zh, separator, en = error["message"].partition(" / ")
    assert separator and CJK.search(zh) and en and not CJK.search(en[:20])
    return dict(error)


@contextmanager
def service(
    make_config: Callable[..., Config], factory: Any, images: dict[str, Any] | None = None, **http: Any
) -> Iterator[LiveService]:
    """A running service with the OCR backend, an API key, `[http]` and `[images]` overrides."""
    config = make_config(http={"api_key": SecretStr(KEY), **http}, images=images or {})
    with running_service(config, factory) as live:
        yield live


@pytest.fixture
def live(make_config, backend_factory) -> Iterator[LiveService]:  # type: ignore[no-untyped-def]
    with service(make_config, backend_factory, max_body_mb=1.0) as running:
        yield running


# --- 400: malformed requests ---------------------------------------------------------------------------

GOOD_PARTS = [{"type": "text", "text": "hi"}]
USER = '{"role": "user", "content": "a"}'
NOT_JSON = [b"{not json", b"\xff\xfe\x00garbage", b"[" * 100_000, b""]
NOT_A_CHAT = [
    "[1, 2]",
    '{"model": "tuwen"}',
    '{"messages": []}',
    '{"messages": "hello"}',
    '{"messages": [{"role": "system", "content": "only a system prompt"}]}',
    '{"messages": [{"role": "tool", "content": "x"}]}',
    f'{{"messages": [{USER}, {{"role": "assistant", "content": "b"}}]}}',
    '{"messages": [{"role": "user", "content": ""}]}',
    '{"messages": [{"role": "user", "content": [{"type": "text"}]}]}',
    '{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
    f'{{"messages": [{USER}], "temperature": 3}}',
    f'{{"messages": [{USER}], "max_tokens": 0}}',
    f'{{"messages": [{USER}], "stream": "yes"}}',
]


@pytest.mark.parametrize("raw", NOT_JSON, ids=["broken", "binary", "deep", "empty"])
def test_bodies_that_are_not_json_are_400(live: LiveService, raw: bytes) -> None:
    assert_error(chat(live, raw=raw), 400, "api_bad_json")


@pytest.mark.parametrize("raw", NOT_A_CHAT, ids=[f"body{i}" for i in range(len(NOT_A_CHAT))])
def test_json_that_is_not_a_chat_request_is_400(live: LiveService, raw: str) -> None:
    assert_error(chat(live, raw=raw.encode()), 400, "api_bad_request")


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("data:image/png,not-base64", "api_bad_request"),
        ("data:image/png;base64,@@@@", "api_bad_request"),
        ("data:image/png;base64,abc", "api_bad_request"),  # bad padding
        ("file:///etc/passwd", "api_bad_request"),
        ("http://example.com/scan.jpg", "api_image_url_disabled"),
    ],
)
def test_unusable_image_urls_are_400(live: LiveService, url: str, code: str) -> None:
    assert_error(chat(live, ask(url)), 400, code)


def test_an_assistant_image_and_a_long_conversation_id_are_400(live: LiveService) -> None:
    image = {"type": "image_url", "image_url": {"url": data_url(png())}}
    messages = [{"role": "assistant", "content": [image]}, {"role": "user", "content": "a"}]
    error = assert_error(chat(live, {"messages": messages}), 400, "api_bad_request")
    assert error["param"] == "messages.0.content"
    long_id = chat(live, ask(data_url(png())), headers={"X-Tuwen-Conversation": "x" * 200})
    assert_error(long_id, 400, "api_bad_request")


def test_fuzzed_bodies_never_get_a_server_error(live: LiveService) -> None:
    rng = random.Random(20240601)
    valid = json.dumps({"messages": [{"role": "user", "content": GOOD_PARTS}], "max_tokens": 4}).encode()
    junk: list[Any] = [None, 0, -1, 1e309, "", "x" * 50, [], {}, [None], {"type": None}, True]
    bodies = [valid[: rng.randrange(len(valid))] for _ in range(10)]  # truncated
    for _ in range(30):  # bytes overwritten
        mutated = bytearray(valid)
        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        bodies.append(bytes(mutated))
    paths = "messages messages.0.role messages.0.content messages.0.content.0 messages.0.content.0.type"
    paths += " max_tokens temperature stream stream_options"
    for _ in range(20):
        body: Any = {"messages": [{"role": "user", "content": [dict(part) for part in GOOD_PARTS]}]}
        *parents, last = [int(key) if key.isdigit() else key for key in rng.choice(paths.split()).split(".")]
        container = body
        for key in parents:
            container = container[key]
        container[last] = rng.choice(junk)
        bodies.append(json.dumps(body).encode())
    statuses = {chat(live, raw=raw).status_code for raw in bodies}
    assert statuses <= {200, 400, 422}, statuses


# --- 401: credentials ----------------------------------------------------------------------------------


def test_key_is_required_except_for_health(live: LiveService) -> None:
    url = live.base_url
    body = ask()
    assert_error(chat(live, body, headers={"Authorization": ""}), 401, "api_unauthorized")
    wrong = chat(live, body, headers={"Authorization": "Bearer wrong"})
    assert_error(wrong, 401, "api_unauthorized")
    assert wrong.headers["WWW-Authenticate"] == "Bearer"
    assert chat(live, body).status_code == 200
    assert httpx.get(url + "/health").status_code == 200
    assert_error(httpx.get(url + "/v1/models"), 401, "api_unauthorized")
    assert_error(httpx.get(url + "/metrics"), 401, "api_unauthorized")
    assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_kiosk_and_feed_tokens_open_only_their_part(live: LiveService) -> None:
    kiosk, feed = Auth(KEY).token(Scope.KIOSK), Auth(KEY).token(Scope.FEED)
    assert chat(live, ask(), headers={"Authorization": f"Bearer {kiosk}"}).status_code == 200
    assert_error(chat(live, ask(), headers={"Authorization": f"Bearer {feed}"}), 401, "api_unauthorized")
    models = httpx.get(live.base_url + "/v1/models", headers={"Authorization": f"Bearer {kiosk}"})
    assert_error(models, 401, "api_unauthorized")


# --- 413: too large ------------------------------------------------------------------------------------


def test_body_over_the_limit_is_413_by_header_and_by_bytes(live: LiveService) -> None:
    big = json.dumps(ask(data_url(b"\x00" * 900_000))).encode()  # ~1.2 MB against max_body_mb = 1
    error = assert_error(chat(live, raw=big), 413, "api_too_large")
    assert error["message"] == str(msg("api_too_large", limit_mb="1"))

    def chunked() -> Iterator[bytes]:  # no Content-Length: only counting the bytes read can catch it
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    assert_error(chat(live, raw=chunked()), 413, "api_too_large")  # type: ignore[arg-type]


def test_image_over_the_image_limits_is_413(make_config, backend_factory) -> None:  # type: ignore[no-untyped-def]
    limits = {"max_file_mb": 1, "max_pixels": 1_000_000}
    with service(make_config, backend_factory, images=limits, max_body_mb=4.0) as live:
        too_many_bytes = chat(live, ask(data_url(b"\x00" * 1_200_000)))
        too_many_pixels = chat(live, ask(data_url(png((2000, 1000)))))
        jobs = live.app.store.list_jobs(source="api")
    assert_error(too_many_bytes, 413, "api_too_large")
    assert_error(too_many_pixels, 413, "image_bomb")
    assert sorted(job.error_code or "" for job in jobs) == ["api_too_large", "image_bomb"]


# --- 422: unusable images and failed jobs ------------------------------------------------------------


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((400, 300), 64).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()[:2000]


@pytest.mark.parametrize(
    ("url", "code"),
    [
        (data_url(b"definitely not an image"), "image_not_image"),
        ("data:image/png;base64,", "image_empty"),
        (data_url(_truncated_jpeg(), "image/jpeg"), "image_corrupt"),
        (data_url(b"<svg/>", "image/svg+xml"), "image_not_image"),
    ],
    ids=["garbage", "empty", "truncated", "svg"],
)
def test_bad_images_are_422_and_recorded_but_never_queued(live: LiveService, url: str, code: str) -> None:
    error = assert_error(chat(live, ask(url), headers={"X-Tuwen-Conversation": "c-9"}), 422, code)
    (job,) = live.app.store.list_jobs(source="api")
    assert (job.status, job.error_code, job.error, job.conversation_id) == (
        "failed",
        code,
        error["message"],
        "c-9",
    )
    assert live.app.worker.backend.calls == []  # type: ignore[union-attr]


def _cut_pdf(tmp: Path) -> Path:
    path = documents.text_pdf(tmp / "cut.pdf", [["Land deed of 1941"]])
    path.write_bytes(path.read_bytes()[:-200])
    return path


@pytest.mark.parametrize(
    ("build", "code"),
    [
        (lambda tmp: documents.encrypted_pdf(tmp / "locked.pdf", user_password="pw"), "pdf_encrypted"),
        (_cut_pdf, "pdf_broken"),
        (lambda tmp: documents.empty_pdf(tmp / "empty.pdf"), "pdf_empty"),
    ],
    ids=["encrypted", "truncated", "no-pages"],
)
def test_bad_pdfs_are_422_with_what_is_wrong(
    live: LiveService, tmp_path: Path, build: Any, code: str
) -> None:
    url = data_url(build(tmp_path).read_bytes(), "application/pdf")
    assert_error(chat(live, ask(url)), 422, code)
    (job,) = live.app.store.list_jobs(source="api")
    assert job.error_code == code
    assert live.app.worker.backend.calls == []  # type: ignore[union-attr]


def test_a_job_that_fails_in_the_worker_is_422_with_its_message(live: LiveService) -> None:
    failure = msg("model_failed", reason="boom")
    live.app.worker.backend.failures.append(PermanentError(failure))  # type: ignore[union-attr]
    error = assert_error(chat(live, ask(data_url(png()))), 422, "model_failed")
    assert error["message"] == str(failure)


def test_a_failed_job_in_a_stream_raises_in_the_sdk(live: LiveService) -> None:
    live.app.worker.backend.failures.append(PermanentError(msg("model_failed", reason="boom")))  # type: ignore[union-attr]
    client = openai.OpenAI(base_url=live.base_url + "/v1", api_key=KEY, max_retries=0)
    stream = client.chat.completions.create(model="tuwen", messages=ask()["messages"], stream=True)
    with pytest.raises(openai.APIError, match="boom"):
        list(stream)


# --- 429, 503, 504 ------------------------------------------------------------------------------------


def test_full_queue_is_429_with_retry_after_before_images_are_read(make_config, backend_factory) -> None:  # type: ignore[no-untyped-def]
    with service(make_config, backend_factory, max_queue=1) as live:
        live.app.worker.backend.delay = 1.0  # type: ignore[union-attr]
        first: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: first.append(chat(live, ask())), daemon=True)
        thread.start()
        wait_until(lambda: live.app.queue.interactive_waiting() == 1, timeout=10)
        refused = chat(live, ask(data_url(b"garbage that would be a 422")))
        thread.join(30)
        failed = live.app.store.list_jobs(status="failed")
    error = assert_error(refused, 429, "api_queue_full")
    assert refused.headers["Retry-After"].isdigit() and int(refused.headers["Retry-After"]) >= 1
    assert "1" in error["message"]
    assert first[0].status_code == 200 and failed == []


def test_model_not_loaded_is_503(make_config, backend_factory) -> None:  # type: ignore[no-untyped-def]
    def broken(backend: Any) -> None:
        def load() -> None:
            raise PermanentError(msg("model_load_failed", path="x", reason="no weights"))

        backend.load = load

    backend_factory.prepare = broken
    with service(make_config, backend_factory) as live:
        response = chat(live, ask())
        health = httpx.get(live.base_url + "/health")
    error = assert_error(response, 503, "api_model_unavailable")
    assert "no weights" in error["message"] and health.status_code == 503


def test_no_answer_in_time_is_504_and_the_job_stays(make_config, backend_factory) -> None:  # type: ignore[no-untyped-def]
    with service(make_config, backend_factory, request_timeout_seconds=0.3) as live:
        live.app.worker.backend.delay = 1.0  # type: ignore[union-attr]
        response = chat(live, ask())
        with httpx.stream(
            "POST",
            live.base_url + "/v1/chat/completions",
            json={**ask(), "stream": True},
            headers={"Authorization": f"Bearer {KEY}"},
        ) as streamed:
            events = [line for line in streamed.iter_lines() if line]
        wait_until(lambda: live.app.store.status_counts().get("done") == 2, timeout=20)
    assert_error(response, 504, "api_timeout")
    assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == "api_timeout"
    assert events[-1] == "data: [DONE]"


# --- image URLs ----------------------------------------------------------------------------------------


def test_image_urls_to_local_addresses_are_refused(make_config, backend_factory) -> None:  # type: ignore[no-untyped-def]
    # Refused after resolving and before connecting, so nothing needs to listen there (see test_uploads).
    with service(make_config, backend_factory, allow_image_urls=True) as live:
        loopback = chat(live, ask("http://127.0.0.1:9/scan.jpg"))
        by_name = chat(live, ask("http://localhost:9/scan.jpg"))
        metadata = chat(live, ask("http://169.254.169.254/latest/meta-data"))
        jobs = live.app.store.list_jobs(source="api")
    codes = [(r.status_code, r.json()["error"]["code"]) for r in (loopback, by_name, metadata)]
    assert codes == [(400, "api_image_url_refused")] * 3
    assert "169.254.169.254" in assert_error(metadata, 400, "api_image_url_refused")["message"]
    assert [job.error_code for job in jobs] == ["api_image_url_refused"] * 3  # recorded, never queued
