"""The hall-screen feed over real HTTP: SSE on connect and live, filters, keep-alives, disconnects, shutdown,
thumbnails and scopes; plus the small JSON the pages need (/api/config/kiosk, /api/i18n)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from db.models import Job, JobStatus
from db.store import Store
from service.config import Config, FeedConfig
from service.events import Event, Priority
from service.http import feed
from service.http.auth import Auth, Scope
from service.messages import all_codes
from tests.conftest import wait_until
from tests.live import LiveService, running_service

KEY = "feed-test-key-0123456789"
ITEM_KEYS = {
    "id",
    "created_at",
    "finished_at",
    "source",
    "source_ref",
    "file_name",
    "question",
    "answer",
    "answer_kind",
    "thumbnail_url",
}


def add_done_job(
    store: Store, source: str, answer: str, *, source_ref: str = "", image: Path | None = None
) -> Job:
    """A finished job written straight to the history (what the worker would have recorded)."""
    job = store.add_job(
        uid=uuid.uuid4().hex,
        source=source,
        source_ref=source_ref,
        priority=int(Priority.BACKLOG),
        status=JobStatus.QUEUED,
        question="这是什么？",
        prompt_hash="0" * 16,
        images=[str(image)] if image else [],
        file_path=str(image) if image and source == "watch" else None,
    )
    return store.finish(job.id, status=JobStatus.DONE, answer=answer)


class Sse:
    """Reads a text/event-stream response line by line: events, and comments when asked."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.iter_lines()

    def next(self, *, comments: bool = False) -> tuple[str, Any]:
        """The next event as (name, parsed data), or ("comment", text) when `comments`."""
        name, data = "message", ""
        for line in self.lines:
            if line.startswith(":") and comments:
                return "comment", line[1:].strip()
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line == "" and data:
                return name, json.loads(data)
        raise EOFError("stream ended")

    def items(self, count: int) -> list[dict[str, Any]]:
        """The next `count` item events' data."""
        found: list[dict[str, Any]] = []
        while len(found) < count:
            name, data = self.next()
            assert name == "item"
            found.append(data)
        return found


@pytest.fixture
def scan_file(tmp_path: Path, scan_bytes: Callable[..., bytes]) -> Callable[[str, list[str]], Path]:
    """Write a rendered scan to tmp_path/scans/<name> and return its path."""

    def make(name: str, lines: list[str]) -> Path:
        path = tmp_path / "scans" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(scan_bytes(lines))
        return path

    return make


@pytest.fixture
def feed_service(make_config: Callable[..., Config], backend_factory: Any) -> Iterator[Callable[..., Any]]:
    """Start a live service whose `[feed]` (and optionally `[http] api_key`) is given."""

    def start(key: str = "", **feed_values: Any) -> Any:
        config = make_config(feed=feed_values) if feed_values else make_config()
        if key:
            config.http = config.http.model_copy(update={"api_key": SecretStr(key)})
        return running_service(config, backend_factory)

    yield start


def test_recent_items_on_connect_follow_sources_watches_and_limit(feed_service: Any) -> None:
    with feed_service(sources=["kiosk"], watches=["hall"], limit=3) as svc:
        store = svc.app.store
        add_done_job(store, "kiosk", "k1")
        add_done_job(store, "web", "w1")
        add_done_job(store, "watch", "h1", source_ref="hall", image=Path("/scans/a/h1.jpg"))
        add_done_job(store, "watch", "o1", source_ref="other")
        add_done_job(store, "kiosk", "k2")
        add_done_job(store, "watch", "h2", source_ref="hall", image=Path("/scans/a/h2.jpg"))
        with httpx.Client(timeout=10) as client, client.stream("GET", svc.base_url + "/api/feed/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            items = Sse(r).items(3)
    assert [item["answer"] for item in items] == ["h1", "k2", "h2"]  # oldest of the newest three first
    assert set(items[2]) == ITEM_KEYS
    assert items[2]["file_name"] == "h2.jpg"
    assert items[2]["thumbnail_url"] == f"/api/feed/thumbnail/{items[2]['id']}"


def submit(svc: LiveService, source: str, image: Path) -> Job:
    """Queue a real job for the worker (what a source adapter does)."""
    event = Event(source=source, question="写了什么？", images=(str(image),), priority=Priority.INTERACTIVE)
    return svc.app.queue.submit(event)


def test_newly_done_jobs_are_pushed_live_and_filtered(
    feed_service: Any, scan_file: Callable[[str, list[str]], Path]
) -> None:
    with (
        feed_service(sources=["api"]) as svc,
        httpx.Client(timeout=20) as client,
        client.stream("GET", svc.base_url + "/api/feed/events") as r,
    ):
        stream = Sse(r)
        wait_until(lambda: feed.hub_for(svc.app).client_count == 1)
        first = submit(svc, "api", scan_file("one.jpg", ["第一张展品"]))
        item = stream.items(1)[0]
        skipped = submit(svc, "web", scan_file("two.jpg", ["网页提问"]))
        wait_until(lambda: svc.app.store.get(skipped.id).status == JobStatus.DONE)  # type: ignore[union-attr]
        second = submit(svc, "api", scan_file("three.jpg", ["第三张展品"]))
        after = stream.items(1)[0]
    assert (item["id"], item["source"]) == (first.id, "api")
    assert "第一张展品" in item["answer"]
    assert after["id"] == second.id  # the web job in between was not sent


def test_a_corrected_answer_is_sent_again_with_the_correction(feed_service: Any) -> None:
    with feed_service(watches=["inbox"]) as svc:
        job = add_done_job(svc.app.store, "watch", "一只猫", source_ref="inbox")
        with httpx.Client(timeout=10) as client, client.stream("GET", svc.base_url + "/api/feed/events") as r:
            stream = Sse(r)
            assert stream.items(1)[0]["answer"] == "一只猫"
            reply = client.post(
                f"{svc.base_url}/api/jobs/{job.id}/review",
                json={"verdict": "corrected", "correction": "一只虎"},
            )
            assert reply.status_code == 200
            again = stream.items(1)[0]
    assert (again["id"], again["answer"]) == (job.id, "一只虎")


def test_idle_streams_get_keep_alive_comments(feed_service: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed, "KEEPALIVE_SECONDS", 0.3)
    with (
        feed_service() as svc,
        httpx.Client(timeout=5) as client,
        client.stream("GET", svc.base_url + "/api/feed/events") as r,
    ):
        assert Sse(r).next(comments=True) == ("comment", "keep-alive")


def test_a_closed_connection_unsubscribes_its_client(feed_service: Any) -> None:
    with feed_service() as svc:
        hub = feed.hub_for(svc.app)
        with httpx.Client(timeout=5) as client, client.stream("GET", svc.base_url + "/api/feed/events"):
            wait_until(lambda: hub.client_count == 1)
        wait_until(lambda: hub.client_count == 0, timeout=5)


def test_server_shutdown_ends_open_streams_at_once(feed_service: Any) -> None:
    ended = threading.Event()

    def listen(url: str) -> None:
        with httpx.Client(timeout=30) as client, client.stream("GET", url) as r:
            for _ in r.iter_lines():
                pass
        ended.set()

    with feed_service() as svc:
        reader = threading.Thread(target=listen, args=(svc.base_url + "/api/feed/events",), daemon=True)
        reader.start()
        wait_until(lambda: feed.hub_for(svc.app).client_count == 1)
        started = time.monotonic()
    assert time.monotonic() - started < 5  # uvicorn waits for open responses: the stream had to end
    assert ended.wait(5)


def test_a_slow_client_loses_its_oldest_items_without_blocking_the_worker() -> None:
    hub = feed.FeedHub(FeedConfig(watches=["hall"]), bound=3)
    jobs = [
        Job(id=n, source="watch", source_ref="hall", status=JobStatus.DONE, question="q", answer=str(n))
        for n in range(10)
    ]

    async def scenario() -> tuple[list[str], int, float]:
        client = hub.subscribe()
        started = time.monotonic()

        def finish_all() -> None:
            for job in jobs:
                hub.publish(job)

        worker = threading.Thread(target=finish_all)
        worker.start()
        worker.join()
        publish_seconds = time.monotonic() - started
        await asyncio.sleep(0.05)  # let the loop run the handed-over callbacks
        answers = []
        while not client.items.empty():
            item = client.items.get_nowait()
            assert item is not None
            answers.append(item["answer"])
        return answers, client.dropped, publish_seconds

    answers, dropped, publish_seconds = asyncio.run(scenario())
    assert answers == ["7", "8", "9"]
    assert dropped == 7
    assert publish_seconds < 1


def test_thumbnails_only_for_jobs_the_feed_shows(
    feed_service: Any, scan_file: Callable[[str, list[str]], Path]
) -> None:
    auth = Auth(KEY)
    with feed_service(key=KEY, watches=["inbox"]) as svc, httpx.Client(base_url=svc.base_url) as client:
        shown = add_done_job(
            svc.app.store, "watch", "a", source_ref="inbox", image=scan_file("a.jpg", ["展品"])
        )
        hidden = add_done_job(svc.app.store, "web", "b", image=scan_file("b.jpg", ["网页"]))
        feed_token = {"token": auth.token(Scope.FEED)}
        ok = client.get(f"/api/feed/thumbnail/{shown.id}", params=feed_token)
        other = client.get(f"/api/feed/thumbnail/{hidden.id}", params=feed_token)
        missing = client.get("/api/feed/thumbnail/999999", params=feed_token)
        anonymous = client.get(f"/api/feed/thumbnail/{shown.id}")
        kiosk = client.get(f"/api/feed/thumbnail/{shown.id}", params={"token": auth.token(Scope.KIOSK)})
    assert (ok.status_code, ok.headers["content-type"], ok.content[:2]) == (200, "image/jpeg", b"\xff\xd8")
    assert [other.status_code, missing.status_code] == [404, 404]
    assert [anonymous.status_code, kiosk.status_code] == [401, 401]


@pytest.mark.parametrize(
    ("token", "status"),
    # The full key opens everything, but only from the Authorization header: in a URL it would end up in
    # logs and browser history.
    [("", 401), (Auth(KEY).token(Scope.KIOSK), 401), (Auth(KEY).token(Scope.FEED), 200), (KEY, 401)],
    ids=["no-token", "kiosk-token", "feed-token", "the-key-in-the-url"],
)
def test_feed_events_need_the_feed_scope(feed_service: Any, token: str, status: int) -> None:
    with (
        feed_service(key=KEY) as svc,
        httpx.Client(timeout=5) as client,
        client.stream("GET", svc.base_url + "/api/feed/events", params={"token": token}) as r,
    ):
        assert r.status_code == status


def test_kiosk_and_feed_config_need_their_tokens(feed_service: Any) -> None:
    auth = Auth(KEY)
    with (
        feed_service(key=KEY, title="今日展品", limit=5) as svc,
        httpx.Client(base_url=svc.base_url) as client,
    ):
        kiosk = client.get(
            "/api/config/kiosk", headers={"Authorization": f"Bearer {auth.token(Scope.KIOSK)}"}
        )
        kiosk_refused = client.get("/api/config/kiosk", params={"token": auth.token(Scope.FEED)})
        feed_config = client.get("/api/config/feed", params={"token": auth.token(Scope.FEED)})
        feed_refused = client.get("/api/config/feed", params={"token": auth.token(Scope.KIOSK)})
    assert kiosk.json() == {
        "title": "拍一拍，问一问",
        "presets": ["这是什么？", "它是什么年代的？", "请用简单的话给孩子讲讲它"],
        "title_en": "Snap it, ask it",
        "presets_en": ["What is this?", "How old is it?", "Explain it simply, for a child"],
        "idle_seconds": 90.0,
        "max_turns": 6,
    }
    assert feed_config.json() == {"title": "今日展品", "limit": 5}
    assert [kiosk_refused.status_code, feed_refused.status_code] == [401, 401]


def test_the_i18n_catalogue_is_public_and_complete(feed_service: Any) -> None:
    with feed_service(key=KEY) as svc:
        catalogue = httpx.get(svc.base_url + "/api/i18n").json()
    ui_codes = {code for code in all_codes() if code.startswith("ui_")}
    assert catalogue["default"] == "zh"
    assert set(catalogue["messages"]["zh"]) == set(catalogue["messages"]["en"]) == ui_codes
    assert catalogue["messages"]["zh"]["ui_tab_history"] == "历史记录"
    assert catalogue["messages"]["en"]["ui_tab_history"] == "History"


def test_pages_carry_a_strict_content_security_policy(feed_service: Any) -> None:
    with feed_service() as svc, httpx.Client(base_url=svc.base_url) as client:
        pages = [client.get(path) for path in ("/", "/kiosk", "/feed")]
        script = client.get("/static/app.js")
        escapes = [
            client.get(path) for path in ("/static/..%2Fpages.py", "/static/nothing.js", "/static/x.html")
        ]
    for page in pages:
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert page.headers["referrer-policy"] == "no-referrer"
    assert script.headers["content-type"].startswith("text/javascript")
    assert [r.status_code for r in escapes] == [404, 404, 404]


def test_the_feed_is_private_by_default(feed_service: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed, "KEEPALIVE_SECONDS", 0.3)
    with feed_service() as svc, httpx.Client(base_url=svc.base_url, timeout=10) as client:
        add_done_job(svc.app.store, "watch", "病历第三页", source_ref="inbox")
        add_done_job(svc.app.store, "kiosk", "游客的照片")
        add_done_job(svc.app.store, "web", "员工的提问")
        with client.stream("GET", "/api/feed/events") as response:
            events = Sse(response)
            name, data = events.next(comments=True)
    assert (name, data) == ("comment", "keep-alive")  # no item at all: nothing was opted into


def test_naming_a_watch_shows_that_folder_only(feed_service: Any) -> None:
    with (
        feed_service(watches=["exhibition"]) as svc,
        httpx.Client(base_url=svc.base_url, timeout=30) as client,
    ):
        add_done_job(svc.app.store, "watch", "展厅说明", source_ref="exhibition")
        add_done_job(svc.app.store, "watch", "档案室病历", source_ref="records")
        add_done_job(svc.app.store, "kiosk", "游客的照片")
        with client.stream("GET", "/api/feed/events") as response:
            (item,) = Sse(response).items(1)
    assert item["answer"] == "展厅说明"
