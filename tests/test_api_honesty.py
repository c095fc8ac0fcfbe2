"""An API that says what it cannot do, and holds up against hostile clients (real HTTP, real service).

Fields that would change the meaning of an answer and that no backend here honours are a 400 naming the
field; harmless ones are accepted. Text with a lone surrogate, an id no row can have, the first and last days
a calendar can hold: never a 500. Every refused request gives its interactive slot back. Too many images or
pixels in one request: 400 naming the limit. 404/405 in OpenAI's shape; X-Request-ID echoed; CORS only
for listed origins.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from tests.live import LiveService, running_service

KEY = "s3cret-key-for-tests"
HEADERS = {"Authorization": f"Bearer {KEY}"}


def _png(size: tuple[int, int] = (64, 48)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, "white").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _body(**extra: Any) -> dict[str, Any]:
    parts = [{"type": "text", "text": "写了什么？"}, {"type": "image_url", "image_url": {"url": _png()}}]
    return {"model": "tuwen", "messages": [{"role": "user", "content": parts}], **extra}


@pytest.fixture
def live(make_config, backend_factory) -> Iterator[LiveService]:  # type: ignore[no-untyped-def]
    config = make_config(
        http={
            "api_key": SecretStr(KEY),
            "max_images_per_request": 3,
            "max_pixels_per_request": 2_000_000,
            "cors_origins": ["https://museum.example.org"],
        }
    )
    with running_service(config, backend_factory) as running:
        yield running


def _post(live: LiveService, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(
        live.base_url + "/v1/chat/completions",
        content=json.dumps(body).encode(),
        headers={**HEADERS, "Content-Type": "application/json", **kwargs.pop("headers", {})},
        timeout=60,
        **kwargs,
    )


def _slots(live: LiveService) -> int:
    """Interactive slots in use: jobs the queue counts plus requests admitted but not yet submitted."""
    metrics = httpx.get(live.base_url + "/metrics", headers=HEADERS, timeout=10).text
    line = next(line for line in metrics.splitlines() if line.startswith("tuwen_interactive_slots_in_use "))
    return int(float(line.split()[1]))


UNSUPPORTED = [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
        "response_format",
    ),
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"logprobs": False, "top_logprobs": 3}, "logprobs"),
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "audio"),
]


@pytest.mark.parametrize(("extra", "param"), UNSUPPORTED, ids=[p for _, p in UNSUPPORTED])
def test_fields_that_would_change_the_answer_are_refused_naming_them(
    live: LiveService, extra: dict[str, Any], param: str
) -> None:
    response = _post(live, _body(**extra))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "api_unsupported" and error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert param in error["message"] and "不支持" in error["message"] and "not supported" in error["message"]


def test_an_audio_part_is_refused_naming_where_it_is(live: LiveService) -> None:
    body = _body()
    body["messages"][0]["content"].append(
        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
    )
    error = _post(live, body).json()["error"]
    assert error["code"] == "api_unsupported" and error["param"] == "messages.0.content.2.type"


def test_harmless_fields_are_accepted(live: LiveService) -> None:
    body = _body(
        user="visitor-7",
        seed=42,
        top_p=0.9,
        stop=["。", "\n\n"],
        presence_penalty=0.5,
        frequency_penalty=0.2,
        tool_choice="none",
        response_format={"type": "text"},
        n=1,
        logprobs=False,
        metadata={"anything": "else"},
    )
    response = _post(live, body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    "text",
    ["\ud800", "前\udfff后", "\u0000NUL\u0000", "\ufeff\u200b", "𠜎" * 300, "<script>alert(1)</script>"],
    ids=["lone-high", "lone-low", "nul", "bom-zwsp", "astral", "html"],
)
def test_any_text_is_accepted_or_refused_never_a_500_and_the_slot_comes_back(
    live: LiveService, text: str
) -> None:
    body = _body()
    body["messages"][0]["content"][0]["text"] = text
    raw = json.dumps(body, ensure_ascii=True).encode()  # \ud800 travels as an escape, as JSON allows
    response = httpx.post(
        live.base_url + "/v1/chat/completions",
        content=raw,
        headers={**HEADERS, "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code in (200, 400), response.text
    follow = _post(live, _body())  # the next visitor is not locked out
    assert follow.status_code == 200
    assert _slots(live) == 0


FAILURE_PATHS = [
    ("bad-json", b"{", 400),
    ("not-a-chat", b'{"messages": []}', 400),
    ("unsupported", json.dumps(_body(tools=[{"type": "function"}])).encode(), 400),
    ("bad-image", json.dumps(_body()).replace("iVBOR", "AAAAA", 1).encode(), 422),
    ("too-many-images", None, 400),
    ("too-many-pixels", None, 400),
]


@pytest.mark.parametrize(("name", "raw", "status"), FAILURE_PATHS, ids=[n for n, _, _ in FAILURE_PATHS])
def test_every_failure_path_releases_its_slot(
    live: LiveService, name: str, raw: bytes | None, status: int
) -> None:
    if name == "too-many-images":
        body = _body()
        body["messages"][0]["content"] += [
            {"type": "image_url", "image_url": {"url": _png((8 + i, 8))}} for i in range(3)
        ]
        raw = json.dumps(body).encode()
    if name == "too-many-pixels":
        body = _body()
        body["messages"][0]["content"][1]["image_url"]["url"] = _png((1500, 1000))
        body["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": _png((1400, 1000))}})
        raw = json.dumps(body).encode()
    assert raw is not None
    response = httpx.post(
        live.base_url + "/v1/chat/completions",
        content=raw,
        headers={**HEADERS, "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == status, response.text
    if name.startswith("too-many"):
        error = response.json()["error"]
        assert error["code"] in ("api_too_many_images", "api_too_many_pixels")
        assert "max_images_per_request" in error["message"] or "max_pixels_per_request" in error["message"]
    assert _slots(live) == 0


@pytest.mark.parametrize(
    "path",
    [
        "/api/jobs/1180591620717411303424",
        "/api/jobs/9223372036854775808",
        "/api/jobs/1180591620717411303424/thumbnail",
        "/api/feed/thumbnail/1180591620717411303424",
    ],
)
def test_ids_no_row_can_have_are_404_not_500(live: LiveService, path: str) -> None:
    response = httpx.get(live.base_url + path, headers=HEADERS, timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_reviewing_an_impossible_id_is_404(live: LiveService) -> None:
    response = httpx.post(
        live.base_url + "/api/jobs/1180591620717411303424/review",
        json={"verdict": "correct"},
        headers=HEADERS,
        timeout=10,
    )
    assert response.status_code == 404


@pytest.mark.parametrize(
    "params",
    [
        {"date_from": "0001-01-01"},
        {"date_to": "9999-12-31"},
        {"date_from": "0001-01-01", "date_to": "9999-12-31"},
    ],
)
def test_the_first_and_last_days_of_the_calendar_are_valid_filters(
    live: LiveService, params: dict[str, str]
) -> None:
    listing = httpx.get(live.base_url + "/api/jobs", params=params, headers=HEADERS, timeout=10)
    export = httpx.get(live.base_url + "/api/jobs/export.csv", params=params, headers=HEADERS, timeout=10)
    assert listing.status_code == 200 and export.status_code == 200


def test_models_by_id_and_unknown_ones_in_openai_shape(live: LiveService) -> None:
    found = httpx.get(live.base_url + "/v1/models/tuwen", headers=HEADERS, timeout=10)
    assert found.status_code == 200 and found.json()["id"] == "tuwen" and found.json()["object"] == "model"
    missing = httpx.get(live.base_url + "/v1/models/gpt-4o", headers=HEADERS, timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert missing.json()["error"]["code"] == "api_model_not_found"


def test_unknown_routes_and_methods_are_openai_shaped_invalid_request_errors(live: LiveService) -> None:
    not_found = httpx.get(live.base_url + "/v1/nothing-here", headers=HEADERS, timeout=10)
    wrong_method = httpx.delete(live.base_url + "/v1/chat/completions", headers=HEADERS, timeout=10)
    for response, status in ((not_found, 404), (wrong_method, 405)):
        assert response.status_code == status
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and set(error) == {"message", "type", "param", "code"}


def test_openai_sdk_sees_a_404_as_not_found(live: LiveService) -> None:
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=live.base_url + "/v1", api_key=KEY, max_retries=0)
    assert client.models.retrieve("tuwen").id == "tuwen"
    with pytest.raises(NotFoundError):
        client.models.retrieve("gpt-4o")


def test_request_ids_are_echoed_or_made_and_recorded_with_the_job(live: LiveService) -> None:
    given = _post(live, _body(), headers={"X-Request-ID": "kiosk-7:abc_123"})
    assert given.status_code == 200 and given.headers["x-request-id"] == "kiosk-7:abc_123"
    made = _post(live, _body(), headers={"X-Request-ID": "no spaces or <tags> allowed"})
    assert len(made.headers["x-request-id"]) == 32 and made.headers["x-request-id"] != "no spaces"
    uid = given.json()["id"].removeprefix("chatcmpl-")
    assert live.app.store.get_by_uid(uid).request_id == "kiosk-7:abc_123"  # type: ignore[union-attr]
    assert httpx.get(live.base_url + "/health", timeout=10).headers["x-request-id"]


def test_cors_answers_preflights_only_for_listed_origins(live: LiveService) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    listed = httpx.options(
        live.base_url + "/v1/chat/completions",
        headers={"Origin": "https://museum.example.org", **preflight},
        timeout=10,
    )
    other = httpx.options(
        live.base_url + "/v1/chat/completions",
        headers={"Origin": "https://evil.example.com", **preflight},
        timeout=10,
    )
    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == "https://museum.example.org"
    assert "access-control-allow-origin" not in other.headers


def test_without_cors_origins_a_preflight_is_an_openai_shaped_405(make_config, backend_factory) -> None:  # type: ignore[no-untyped-def]
    config = make_config(http={"api_key": SecretStr(KEY)})
    with running_service(config, backend_factory) as live:
        response = httpx.options(
            live.base_url + "/v1/chat/completions",
            headers={"Origin": "https://museum.example.org", "Access-Control-Request-Method": "POST"},
            timeout=10,
        )
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "access-control-allow-origin" not in response.headers
