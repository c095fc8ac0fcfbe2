"""Cross-site request forgery on a real running service: a request that only the session cookie
authenticates must prove it comes from tuwen's own pages (same `Origin` or the session's `X-CSRF-Token`) and
send JSON; calls with the key or a kiosk token in the Authorization header are unaffected.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bench.render import render_text_image
from service.config import Config, HttpConfig, ImagesConfig, StorageConfig, WatchConfig
from service.http.auth import SESSION_COOKIE, Auth, Scope
from tests.conftest import InstrumentedBackend
from tests.live import LiveService, running_service

KEY = "csrf-test-key-0123456789abcdef"
EVIL = "http://evil.example"


@dataclass
class Session:
    """A running service, one done job, and a logged-in browser's cookie and CSRF token."""

    live: LiveService
    job_id: int
    cookie: str
    csrf: str

    @property
    def origin(self) -> str:
        return self.live.base_url


def scan_data_url(line: str) -> str:
    buffer = io.BytesIO()
    render_text_image([line], size=(600, 150), font_size=40).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat_body(line: str) -> dict[str, Any]:
    content = [
        {"type": "image_url", "image_url": {"url": scan_data_url(line)}},
        {"type": "text", "text": "?"},
    ]
    return {"model": "tuwen", "messages": [{"role": "user", "content": content}]}


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory, ocr_engine: object) -> Iterator[Session]:
    root = tmp_path_factory.mktemp("csrf")
    config = Config(
        storage=StorageConfig(data_dir=root / "data"),
        http=HttpConfig(enabled=False, api_key=SecretStr(KEY)),
        images=ImagesConfig(),
        watch=[WatchConfig(path=root / "inbox", name="inbox")],
    )
    (root / "inbox").mkdir()
    with running_service(config, lambda c: InstrumentedBackend(c, ocr_engine)) as live:
        answer = httpx.post(
            live.base_url + "/v1/chat/completions",
            json=chat_body("审核用"),
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        (job,) = live.app.store.list_jobs()
        logged_in = httpx.post(live.base_url + "/login", data={"key": KEY})
        cookie = logged_in.cookies[SESSION_COOKIE]
        page = httpx.get(live.base_url + "/", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
        found = re.search(r'data-csrf="([0-9a-f]{64})"', page.text)
        assert found
        yield Session(live, job.id, cookie, found.group(1))


def endpoint(session: Session, name: str) -> tuple[str, dict[str, Any]]:
    """Path and JSON body of one state-changing call the web UI makes."""
    if name == "chat":
        return "/v1/chat/completions", chat_body("同源提问")
    if name == "review":
        return f"/api/jobs/{session.job_id}/review", {"verdict": "correct"}
    if name == "report":
        return "/api/reports/generate", {}
    if name == "rerun":
        return f"/api/jobs/{session.job_id}/rerun", {}
    if name == "watch-rerun":
        return "/api/watches/inbox/rerun", {"which": "failed"}
    if name in ("pause", "resume"):
        return f"/api/backlog/{name}", {}
    return "/api/review/sample", {"n": 5}


def send(session: Session, name: str, headers: dict[str, str], content_type: str = "application/json") -> Any:
    """POST the endpoint's JSON body with `headers` (CSRF placeholders resolved) and `content_type`."""
    path, body = endpoint(session, name)
    resolved = {
        key: value.replace("{https-origin}", session.origin.replace("http://", "https://"))
        .replace("{origin}", session.origin)
        .replace("{csrf}", session.csrf)
        for key, value in headers.items()
    }
    return httpx.post(
        session.live.base_url + path,
        content=json.dumps(body).encode(),
        headers={"Content-Type": content_type, **resolved},
        timeout=60,
    )


ENDPOINTS = ["chat", "review", "sample", "report", "rerun", "watch-rerun", "pause", "resume"]
REFUSED = {
    "no-origin-no-token": ({}, "application/json", "api_csrf_refused"),
    "foreign-origin": ({"Origin": EVIL}, "application/json", "api_csrf_refused"),
    "null-origin": ({"Origin": "null"}, "application/json", "api_csrf_refused"),
    "other-port": ({"Origin": "http://127.0.0.1:1"}, "application/json", "api_csrf_refused"),
    "https-origin": ({"Origin": "{https-origin}"}, "application/json", "api_csrf_refused"),
    "wrong-token": ({"X-CSRF-Token": "0" * 64}, "application/json", "api_csrf_refused"),
    "foreign-origin-wrong-token": (
        {"Origin": EVIL, "X-CSRF-Token": "x"},
        "application/json",
        "api_csrf_refused",
    ),
    "same-origin-text-plain": ({"Origin": "{origin}"}, "text/plain", "api_json_required"),
    "same-origin-form": ({"Origin": "{origin}"}, "application/x-www-form-urlencoded", "api_json_required"),
    "token-text-plain": ({"X-CSRF-Token": "{csrf}"}, "text/plain;charset=UTF-8", "api_json_required"),
}


@pytest.mark.parametrize("name", ENDPOINTS)
@pytest.mark.parametrize("case", list(REFUSED))
def test_cookie_only_requests_without_proof_are_403(session: Session, name: str, case: str) -> None:
    headers, content_type, code = REFUSED[case]
    cookie = {"Cookie": f"{SESSION_COOKIE}={session.cookie}"}
    before = len(session.live.app.store.list_jobs())
    response = send(session, name, {**cookie, **headers}, content_type)
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert (error["code"], error["type"]) == (code, "permission_error")
    assert " / " in error["message"]
    assert len(session.live.app.store.list_jobs()) == before  # nothing was asked


@pytest.mark.parametrize("name", ENDPOINTS)
@pytest.mark.parametrize(
    "proof",
    [{"Origin": "{origin}"}, {"X-CSRF-Token": "{csrf}"}, {"Origin": EVIL, "X-CSRF-Token": "{csrf}"}],
    ids=["same-origin", "csrf-token", "token-beats-a-proxy-rewritten-origin"],
)
def test_cookie_requests_from_the_pages_go_through(
    session: Session, name: str, proof: dict[str, str]
) -> None:
    cookie = {"Cookie": f"{SESSION_COOKIE}={session.cookie}"}
    response = send(session, name, {**cookie, **proof})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("name", ENDPOINTS)
def test_bearer_calls_need_no_origin_or_token(session: Session, name: str) -> None:
    response = send(session, name, {"Authorization": f"Bearer {KEY}", "Origin": EVIL})
    assert response.status_code == 200, response.text


def test_a_kiosk_token_asks_from_anywhere_and_reviews_nothing(session: Session) -> None:
    kiosk = {"Authorization": f"Bearer {Auth(KEY).token(Scope.KIOSK)}", "Origin": EVIL}
    cookie = {"Cookie": f"{SESSION_COOKIE}={session.cookie}"}
    asked = send(session, "chat", kiosk)
    # A kiosk token beside the cookie does not vouch for the cookie on a page it cannot open itself.
    review = send(session, "review", {**kiosk, **cookie})
    assert asked.status_code == 200, asked.text
    assert review.status_code == 403 and review.json()["error"]["code"] == "api_csrf_refused"


def test_reads_with_the_cookie_need_no_proof(session: Session) -> None:
    cookie = {"Cookie": f"{SESSION_COOKIE}={session.cookie}", "Origin": EVIL}
    stats = httpx.get(session.live.base_url + "/api/review/stats", headers=cookie)
    assert stats.status_code == 200


def test_the_login_form_itself_is_a_form_post(session: Session) -> None:
    response = httpx.post(
        session.live.base_url + "/login", data={"key": KEY}, headers={"Origin": session.origin}
    )
    assert response.status_code == 303 and response.cookies.get(SESSION_COOKIE)
