"""Logging in on a real running service: random server-side sessions, logout, expiry, key rotation, the
login throttle, the key never in a URL, and the API description behind the key.

Requests go over real HTTP to 127.0.0.1; the throttle tests also come from 127.0.0.2 and 127.0.0.3 (all of
127/8 is this machine) to show that wrong tries count per account across addresses.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from db.models import LoginSession, utcnow
from service.config import Config
from service.http.auth import SESSION_COOKIE, Auth, Scope
from service.http.pages import PAGE_HEADERS
from tests.live import LiveService, running_service

KEY = "sessions-test-key-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {KEY}"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def start(make_config: Callable[..., Config], backend_factory: Any) -> Callable[..., Any]:
    """Start a live service with the key; keyword arguments override `[http]`."""

    def run(**http: Any) -> Any:
        return running_service(make_config(http={"api_key": SecretStr(KEY), **http}), backend_factory)

    return run


@pytest.fixture
def live(start: Callable[..., Any]) -> Iterator[LiveService]:
    with start() as svc:
        yield svc


def login(svc: LiveService, key: str = KEY, address: str = "127.0.0.1") -> httpx.Response:
    """POST the login form as a browser would, from `address`."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30) as client:
        return client.post(svc.base_url + "/login", data={"key": key}, headers=FORM)


def session_cookie(response: httpx.Response) -> str:
    """The session cookie a successful login set."""
    assert response.status_code == 303, response.text
    value = response.cookies.get(SESSION_COOKIE)
    assert value
    return value


def with_cookie(value: str, **headers: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={value}", **headers}


def get(svc: LiveService, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(svc.base_url + path, timeout=30, **kwargs)


def csrf_of(svc: LiveService, cookie: str) -> str:
    """The CSRF token the web UI's page carries for this session."""
    page = get(svc, "/", headers=with_cookie(cookie))
    assert page.status_code == 200
    found = re.search(r'data-csrf="([0-9a-f]{64})"', page.text)
    assert found, page.text[:300]
    return found.group(1)


def session_rows(svc: LiveService) -> list[LoginSession]:
    with svc.app.store.read_session() as session:
        return list(session.query(LoginSession).all())


# --- sessions --------------------------------------------------------------------------------------------


def test_each_login_gets_its_own_random_server_side_session(live: LiveService) -> None:
    first, second = (login(live) for _ in range(2))
    one, two = session_cookie(first), session_cookie(second)
    rows = session_rows(live)
    set_cookie = first.headers["set-cookie"].lower()
    assert one != two and KEY not in (one, two) and Auth(KEY).token("session") not in (one, two)
    assert len(one) >= 43  # 32 random bytes
    assert {row.id for row in rows} == {hashlib.sha256(v.encode()).hexdigest() for v in (one, two)}
    assert all(row.role == "admin" and row.address == "127.0.0.1" for row in rows)
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie and "max-age=43200" in set_cookie
    assert get(live, "/api/review/stats", headers=with_cookie(one)).status_code == 200
    assert get(live, "/api/review/stats", headers=with_cookie("forged-" + one)).status_code == 401


def test_logout_is_a_post_with_csrf_and_ends_the_session_on_the_server(live: LiveService) -> None:
    cookie = session_cookie(login(live))
    csrf = csrf_of(live, cookie)
    confirm = get(live, "/logout", headers=with_cookie(cookie))
    still_in = get(live, "/api/review/stats", headers=with_cookie(cookie))
    no_proof = httpx.post(live.base_url + "/logout", headers=with_cookie(cookie, **FORM))
    foreign = httpx.post(
        live.base_url + "/logout", headers=with_cookie(cookie, Origin="http://evil.example", **FORM)
    )
    still_in_after_refusals = get(live, "/api/review/stats", headers=with_cookie(cookie))
    out = httpx.post(live.base_url + "/logout", data={"csrf": csrf}, headers=with_cookie(cookie, **FORM))
    after = get(live, "/api/review/stats", headers=with_cookie(cookie))
    assert (confirm.status_code, still_in.status_code) == (200, 200)  # GET only asks
    assert confirm.headers["content-security-policy"] == PAGE_HEADERS["Content-Security-Policy"]
    assert (no_proof.status_code, foreign.status_code, still_in_after_refusals.status_code) == (403, 403, 200)
    assert no_proof.json()["error"]["code"] == "api_csrf_refused"
    assert (out.status_code, out.headers["location"]) == (303, "/login")
    assert (
        f'{SESSION_COOKIE}=""' in out.headers["set-cookie"]
        or "max-age=0" in out.headers["set-cookie"].lower()
    )
    assert after.status_code == 401 and session_rows(live) == []


def test_a_same_origin_logout_form_needs_no_token(live: LiveService) -> None:
    cookie = session_cookie(login(live))
    out = httpx.post(live.base_url + "/logout", headers=with_cookie(cookie, Origin=live.base_url, **FORM))
    assert out.status_code == 303
    assert get(live, "/api/review/stats", headers=with_cookie(cookie)).status_code == 401


def test_sessions_end_after_session_hours(start: Callable[..., Any]) -> None:
    with start(session_hours=2) as svc:
        response = login(svc)
        cookie = session_cookie(response)
        (row,) = session_rows(svc)
        before = get(svc, "/api/review/stats", headers=with_cookie(cookie))
        with svc.app.store.write_session() as session:  # two hours and a minute later
            stored = session.get(LoginSession, row.id)
            assert stored is not None
            stored.expires_at = utcnow() - timedelta(minutes=1)
        after = get(svc, "/api/review/stats", headers=with_cookie(cookie))
        page = get(svc, "/", headers=with_cookie(cookie))
        rows_after = session_rows(svc)
    assert "max-age=7200" in response.headers["set-cookie"].lower()
    assert timedelta(hours=2) - (row.expires_at - row.created_at) < timedelta(seconds=5)
    assert (before.status_code, after.status_code) == (200, 401)
    assert (page.status_code, page.headers["location"]) == (303, "/login")
    assert rows_after == []  # an expired row is deleted when it is next presented


def test_rotating_the_key_ends_every_session(start: Callable[..., Any]) -> None:
    with start() as svc:
        cookie = session_cookie(login(svc))
        assert get(svc, "/api/review/stats", headers=with_cookie(cookie)).status_code == 200
        (row,) = session_rows(svc)
    with start(api_key=SecretStr("a-brand-new-key-9876543210")) as svc:
        refused = get(svc, "/api/review/stats", headers=with_cookie(cookie))
        rows = session_rows(svc)
    with start() as svc:  # and back: the old session stays gone
        back = get(svc, "/api/review/stats", headers=with_cookie(cookie))
    assert row.user is not None and row.user.startswith("key:") and KEY not in row.user
    assert (refused.status_code, back.status_code) == (401, 401)
    assert rows == []


# --- the login throttle ----------------------------------------------------------------------------------


def wrong_tries(svc: LiveService, addresses: list[str]) -> list[int]:
    """One wrong login from each address, all at once (each waits out the failure delay in parallel)."""
    with ThreadPoolExecutor(len(addresses)) as pool:
        return list(pool.map(lambda address: login(svc, "wrong-key", address).status_code, addresses))


def test_ten_wrong_tries_a_minute_then_429_with_retry_after_even_for_the_key(live: LiveService) -> None:
    statuses = wrong_tries(live, ["127.0.0.1"] * 10)
    wrong = login(live, "wrong-key")
    right = login(live)
    assert statuses == [401] * 10
    assert wrong.status_code == right.status_code == 429
    assert 1 <= int(right.headers["retry-after"]) <= 60
    assert 'data-login="throttled"' in right.text and SESSION_COOKIE not in right.headers.get(
        "set-cookie", ""
    )
    assert right.headers["content-security-policy"] == PAGE_HEADERS["Content-Security-Policy"]
    assert session_rows(live) == []


def test_wrong_tries_count_per_account_across_addresses(live: LiveService) -> None:
    statuses = wrong_tries(live, ["127.0.0.2"] * 5 + ["127.0.0.3"] * 5)
    elsewhere = login(live, address="127.0.0.4")
    assert statuses == [401] * 10
    assert elsewhere.status_code == 429 and "retry-after" in elsewhere.headers


def test_nine_wrong_tries_still_let_the_key_in(live: LiveService) -> None:
    statuses = wrong_tries(live, ["127.0.0.1"] * 9)
    assert statuses == [401] * 9
    assert login(live).status_code == 303


# --- the key only in the Authorization header --------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/jobs", "/api/review/stats", "/v1/models", "/metrics", "/kiosk", "/feed"]
)
def test_the_full_key_in_the_url_opens_nothing(live: LiveService, path: str) -> None:
    in_url = get(live, path, params={"token": KEY})
    in_header = get(live, path, headers=BEARER)
    assert (in_url.status_code, in_header.status_code) == (401, 200)


def test_the_full_key_in_the_url_does_not_open_the_web_ui(live: LiveService) -> None:
    page = get(live, "/", params={"token": KEY})
    assert (page.status_code, page.headers["location"]) == (303, "/login")


@pytest.mark.parametrize(("scope", "path"), [(Scope.KIOSK, "/kiosk"), (Scope.FEED, "/feed")])
def test_kiosk_and_feed_tokens_still_open_their_page_from_the_url(
    live: LiveService, scope: Scope, path: str
) -> None:
    assert get(live, path, params={"token": Auth(KEY).token(scope)}).status_code == 200


# --- the API description -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_no_swagger_or_redoc_pages_that_load_from_a_cdn(live: LiveService, path: str) -> None:
    for headers in ({}, BEARER):
        response = get(live, path, headers=headers)
        assert response.status_code == 404
        assert "cdn" not in response.text.lower()


def test_openapi_json_needs_the_key_and_has_the_page_headers(live: LiveService) -> None:
    cookie = session_cookie(login(live))
    anonymous = get(live, "/openapi.json")
    in_url = get(live, "/openapi.json", params={"token": KEY})
    kiosk = get(live, "/openapi.json", headers={"Authorization": f"Bearer {Auth(KEY).token(Scope.KIOSK)}"})
    bearer = get(live, "/openapi.json", headers=BEARER)
    by_cookie = get(live, "/openapi.json", headers=with_cookie(cookie))
    assert [r.status_code for r in (anonymous, in_url, kiosk)] == [401, 401, 401]
    assert (bearer.status_code, by_cookie.status_code) == (200, 200)
    assert "/v1/chat/completions" in bearer.json()["paths"]
    assert all(bearer.headers[name] == value for name, value in PAGE_HEADERS.items())


def test_openapi_json_is_open_without_a_key(make_config: Callable[..., Config], backend_factory: Any) -> None:
    with running_service(make_config(), backend_factory) as svc:
        response = get(svc, "/openapi.json")
        docs = get(svc, "/docs")
    assert response.status_code == 200 and "/v1/chat/completions" in response.json()["paths"]
    assert response.headers["x-frame-options"] == "DENY" and docs.status_code == 404
