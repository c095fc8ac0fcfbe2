"""Report delivery: the real report files through the real bots to fake chat servers; the web UI's listing.

Telegram: the real aiogram bot of the real `TelegramBot` source, started by the App, against the fake Bot API
server; the report is the real `write_report` over a history with a few jobs. WeCom: the real `WeComBot` and
its API client against the fake WeCom server (media/upload, message/send). WeChat: the real bridge and child
process with wechaty's FakePuppet (skipped without the optional extra). Retries use short waits here.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from bots.telegram import TelegramBot
from bots.wechat import WeChatBot
from service.app import App
from service.composition import build_service
from service.config import Config, ReportConfig
from service.http.app import create_http_app
from service.messages import msg
from service.queue import JobQueue
from service.reports.delivery import Deliverer
from service.reports.schedule import ReportScheduler
from service.storage import open_store
from tests.conftest import wait_until
from tests.fake_telegram import FakeTelegram, fake_telegram
from tests.fake_wecom import running_fake_wecom
from tests.live import running_service

TOKEN = "123456789:AAE-secret-Token_for_tests"
CHAT = 1001
SHANGHAI = ZoneInfo("Asia/Shanghai")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Running:
    """A started App with a daily report to the fake Telegram chat."""

    app: App
    scheduler: ReportScheduler
    run_time: datetime


def seed_history(app: App, day: datetime) -> None:
    """Three jobs on `day` (local): two answered in Telegram, one failed folder scan."""
    jobs: list[tuple[str, str, str, str | None, str | None]] = [
        ("telegram", str(CHAT), "done", "一封家书", None),
        ("telegram", str(CHAT), "done", "一张地图", None),
        ("watch", "inbox", "failed", None, "image_corrupt"),
    ]
    for hour, (source, ref, status, answer, error_code) in enumerate(jobs, start=9):
        created = day.replace(hour=hour)
        app.store.add_job(
            uid=uuid.uuid4().hex,
            source=source,
            source_ref=ref,
            question="这是什么？",
            prompt_hash="0" * 16,
            status=status,
            answer=answer,
            error_code=error_code,
            error=str(msg(error_code)) if error_code else None,
            created_at=created,
            started_at=created,
            finished_at=created + timedelta(seconds=2),
            latency_ms=1500.0,
        )


@pytest.fixture
def service(make_config: Callable[..., Config], backend_factory: Any) -> Iterator[Callable[..., Running]]:
    """Start the service with the Telegram bot at a fake server and a report to chat 1001."""
    apps: list[App] = []

    def start(api_base: str, **report: Any) -> Running:
        telegram = {"enabled": True, "token": SecretStr(TOKEN), "api_base": api_base}
        config = make_config(watches=[], telegram=telegram)
        # Once a year, so the scheduler itself never fires during a test; the tests call run_report.
        yearly = {"schedule": "0 18 1 1 *", **report}
        config.report = [ReportConfig(name="daily", telegram_chat_ids=[str(CHAT)], **yearly)]
        app = build_service(config, backend_factory=backend_factory)
        apps.append(app)
        app.start()
        bot = app.notifiers["telegram"]
        assert isinstance(bot, TelegramBot)
        wait_until(bot.ready.is_set, timeout=10)
        scheduler = app.reports
        assert scheduler is not None
        scheduler.deliverer = Deliverer(
            app.notifiers, attempts=3, backoff_seconds=0.05, stop_event=scheduler.stop_event
        )
        run_time = datetime.now(SHANGHAI)
        seed_history(app, (run_time - timedelta(days=1)).replace(minute=0, second=0, microsecond=0))
        return Running(app, scheduler, run_time)

    yield start
    for app in apps:
        app.stop()


def uploaded(params: dict[str, Any], field: str) -> dict[str, Any]:
    """The file a Bot API call uploaded as `field` (aiogram sends "attach://NAME" and the file as NAME)."""
    reference = params[field]
    assert isinstance(reference, str) and reference.startswith("attach://")
    upload: dict[str, Any] = params[reference.removeprefix("attach://")]
    return upload


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    """The fake Bot API server."""
    with fake_telegram(TOKEN) as fake:
        yield fake


def test_a_report_reaches_telegram_as_summary_chart_and_page(
    service: Callable[..., Running], telegram: FakeTelegram
) -> None:
    running = service(telegram.url)
    record = running.scheduler.run_report("daily", running.run_time)
    assert record.status == "written"
    (delivered,) = record.delivery
    assert (delivered["status"], delivered["sent"]) == ("sent", ["text", "image", "document"])

    (summary,) = telegram.texts(CHAT)
    assert summary.startswith(f"【{msg('report_title', name='daily').zh}】") and "3" in summary  # 3 jobs
    (photo,) = telegram.sent("sendPhoto")
    (document,) = telegram.sent("sendDocument")
    assert int(photo["chat_id"]) == CHAT and int(document["chat_id"]) == CHAT
    png, html = Path(record.files["png"]), Path(record.files["html"])
    chart, page = uploaded(photo, "photo"), uploaded(document, "document")
    assert chart["data"] == png.read_bytes() and chart["data"].startswith(PNG_MAGIC)
    assert page["filename"] == html.name and page["data"] == html.read_bytes()
    assert b"<!doctype html>" in page["data"][:200].lower()
    state = running.scheduler.state.get("daily")["runs"][0]
    assert state["delivery"][0]["status"] == "sent"


@pytest.mark.parametrize(
    ("failures", "status", "calls"),
    [({"sendPhoto": 2}, "sent", {"sendPhoto": 3}), ({"sendMessage": 100}, "failed", {"sendMessage": 3})],
    ids=["recovers-after-two-502s", "keeps-failing"],
)
def test_a_failing_telegram_delivery_is_retried_logged_and_the_files_kept(
    service: Callable[..., Running],
    telegram: FakeTelegram,
    caplog: pytest.LogCaptureFixture,
    failures: dict[str, int],
    status: str,
    calls: dict[str, int],
) -> None:
    caplog.set_level(logging.INFO, logger="tuwen.service.reports")
    running = service(telegram.url)
    telegram.fail_next.update(failures)
    record = running.scheduler.run_report("daily", running.run_time)
    assert record.delivery[0]["status"] == status
    for method, count in calls.items():
        assert len(telegram.sent(method)) == count
    assert "retry 1/2" in caplog.text
    failed_line = "report delivery to telegram 1001 failed"
    assert (failed_line in caplog.text) == (status == "failed")
    assert all(Path(path).exists() for path in record.files.values())
    assert running.scheduler.state.time("daily", "last_fire") == running.run_time  # written is done
    assert TOKEN.split(":")[1] not in caplog.text


def test_a_telegram_server_that_is_down_fails_after_retries_and_the_files_stay(
    service: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    with fake_telegram(TOKEN) as fake:
        running = service(fake.url)
    # The fake server is gone: every send meets a refused connection.
    record = running.scheduler.run_report("daily", running.run_time)
    (delivered,) = record.delivery
    assert delivered["status"] == "failed" and delivered["attempts"] == 3
    assert "TelegramNetworkError" in delivered["error"]
    assert "report delivery to telegram 1001 failed" in caplog.text
    assert {"markdown", "html", "csv", "png"} <= set(record.files)
    assert all(Path(path).is_file() for kind, path in record.files.items() if kind != "folder")


@dataclass
class StandInFiles:
    """Just what delivery reads."""

    png: Path | None
    html: Path | None
    summary_zh: str


def stand_in_files(tmp_path: Path) -> StandInFiles:
    png, html = tmp_path / "daily.png", tmp_path / "daily.html"
    png.write_bytes(PNG_MAGIC + b"chart")
    html.write_text("<!doctype html><title>日报</title>", encoding="utf-8")
    return StandInFiles(png, html, "图问日报：共处理 3 项，失败 1 项")


def test_wecom_gets_the_text_the_chart_as_image_and_the_page_as_file(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    with running_fake_wecom("ww0123456789abcdef", "app-secret-value-0123") as fake:
        wecom = {
            "enabled": True,
            "corp_id": "ww0123456789abcdef",
            "agent_id": 1000002,
            "secret": SecretStr("app-secret-value-0123"),
            "token": SecretStr("QDG6eK"),
            "encoding_aes_key": SecretStr("jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"),
            "api_base": fake.url,
        }
        app = build_service(make_config(watches=[], wecom=wecom))  # never started: notify needs no callback
        try:
            files = stand_in_files(tmp_path)
            report = ReportConfig(name="daily", wecom_users=["zhangsan"])
            (result,) = Deliverer(app.notifiers, backoff_seconds=0.05).deliver(report, files)
        finally:
            app.store.close()
    assert (result.status, result.sent) == ("sent", ["text", "image", "document"])
    assert fake.texts_to("zhangsan") == [files.summary_zh]
    image, page = (m for m in fake.sent if m["msgtype"] != "text")
    assert (image["msgtype"], page["msgtype"]) == ("image", "file")
    assert fake.uploads[image["image"]["media_id"]]["filename"] == "daily.png"
    assert fake.uploads[page["file"]["media_id"]] | {"size": 0} == {
        "type": "file",
        "filename": "daily.html",
        "size": 0,
    }


def test_a_platform_without_a_notifier_is_skipped_with_a_clear_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    report = ReportConfig(name="daily", wechat_contacts=["wxid_alice"])
    (result,) = Deliverer({}).deliver(report, stand_in_files(tmp_path))
    assert result.status == "failed" and result.attempts == 0
    assert str(msg("report_no_notifier", platform="微信 WeChat")) in caplog.text


# --- WeChat through the real bridge -------------------------------------------------------------------------

needs_wechaty = pytest.mark.skipif(
    importlib.util.find_spec("wechaty") is None, reason="python-wechaty not installed (optional extra)"
)
ALICE, SELF = "wxid_alice", "wxid_tuwen"


def make_quiet_puppet(options: Any, cache_dir: Path) -> Any:
    """`ChildSettings.puppet_factory` target: a FakePuppet that logs in, then records what it is to send."""
    from wechaty.fake_puppet import FakePuppet
    from wechaty_puppet import ContactPayload
    from wechaty_puppet.schemas.event import EventLoginPayload

    class QuietPuppet(FakePuppet):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(options)
            self.login_user_id = SELF
            for contact_id, name in ((SELF, "图问"), (ALICE, "Alice")):
                self.add_fake_contact(ContactPayload(id=contact_id, name=name, friend=True))

        async def start(self) -> None:
            self.emitter.emit("login", EventLoginPayload(contact_id=SELF))
            await asyncio.Event().wait()

        async def message_send_text(
            self, conversation_id: str, message: str, mention_ids: list[str] | None = None
        ) -> str:
            with (cache_dir / "sent.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"to": conversation_id, "text": message}, ensure_ascii=False) + "\n")
            return uuid.uuid4().hex

    return QuietPuppet()


@needs_wechaty
def test_wechat_gets_the_summary_as_text_through_the_bridge(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    config = make_config(watches=[], wechat={"enabled": True})
    store = open_store(config)
    bot = WeChatBot(config, JobQueue(store), puppet_factory="tests.test_report_delivery:make_quiet_puppet")
    bot.start()
    try:
        wait_until(lambda: bot.online, timeout=30)
        report = ReportConfig(name="daily", wechat_contacts=[ALICE])
        (result,) = Deliverer({"wechat": bot}, backoff_seconds=0.05).deliver(report, stand_in_files(tmp_path))
    finally:
        bot.stop()
        store.close()
    assert (result.status, result.sent, result.skipped) == ("sent", ["text"], ["image", "document"])
    sent = (config.storage.data_dir / "wechaty" / "sent.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in sent] == [{"to": ALICE, "text": "图问日报：共处理 3 项，失败 1 项"}]


# --- the web UI's listing ---------------------------------------------------------------------------------


def test_the_reports_api_lists_a_run_serves_its_files_and_refuses_traversal(
    make_config: Callable[..., Config], backend_factory: Any
) -> None:
    config = make_config(watches=[], http={"api_key": SecretStr("k" * 24)})
    config.report = [ReportConfig(name="daily")]
    app = build_service(config, backend_factory=backend_factory)
    app.start()
    try:
        assert app.reports is not None
        now = datetime.now(SHANGHAI)
        seed_history(app, (now - timedelta(days=1)).replace(minute=0, second=0, microsecond=0))
        record = app.reports.run_report("daily", now)
        client = TestClient(create_http_app(app.http_context()))
        assert client.get("/api/reports").status_code == 401
        client.headers["Authorization"] = "Bearer " + "k" * 24
        body = client.get("/api/reports").json()
    finally:
        app.stop()
    (item,) = body["items"]
    stamp = Path(record.files["folder"]).name
    assert (item["name"], item["stamp"]) == ("daily", stamp)
    assert sorted(f["kind"] for f in item["files"]) == ["csv", "html", "markdown", "png"]
    (schedule,) = body["schedules"]
    assert schedule["schedule"] == "0 18 * * *" and schedule["last_run"]["status"] == "written"

    urls = {f["kind"]: f["url"] for f in item["files"]}
    page = client.get(urls["html"])
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "style-src 'unsafe-inline'" in csp and "img-src data:" in csp and "script" not in csp
    assert client.get(urls["png"]).content.startswith(PNG_MAGIC)
    assert client.get(urls["csv"]).headers["content-disposition"].startswith("attachment")
    refused = [
        f"/reports/daily/{stamp}/..%2F..%2F..%2Ftuwen.sqlite3",
        f"/reports/daily/..%2F{stamp}/x.html",
        "/reports/daily/..%2F..%2Ftuwen.sqlite3/x.png",
        f"/reports/daily/{stamp}/.%2E%2F.schedule-state.json",
        "/reports/daily/../.schedule-state.json/x.html",
        f"/reports/daily/{stamp}/%2Fetc%2Fpasswd",
        f"/reports/daily/{stamp}/daily.sqlite3",
    ]
    for url in refused:
        assert client.get(url).status_code == 404, url
    (config.storage.data_dir / "reports" / "daily" / stamp / "escape.html").symlink_to(config.db_path)
    assert client.get(f"/reports/daily/{stamp}/escape.html").status_code == 404


def test_the_reports_tab_lists_a_run_and_its_page_opens_with_its_images(
    make_config: Callable[..., Config], backend_factory: Any
) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    from tests.browser import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed")
    config = make_config(watches=[])
    config.report = [ReportConfig(name="daily")]
    with running_service(config, backend_factory) as live, playwright_api.sync_playwright() as playwright:
        assert live.app.reports is not None
        now = datetime.now(SHANGHAI)
        seed_history(live.app, (now - timedelta(days=1)).replace(minute=0, second=0, microsecond=0))
        live.app.reports.run_report("daily", now)
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        blocked: list[str] = []
        page.on(
            "console",
            lambda message: blocked.append(message.text) if "Content Security" in message.text else None,
        )
        page.goto(live.base_url + "/#reports")
        link = page.locator("#report-rows a", has_text=msg("ui_reports_file_html").zh)
        playwright_api.expect(link).to_have_count(1)
        playwright_api.expect(page.locator("#report-schedules li")).to_contain_text("0 18 * * *")
        href = link.get_attribute("href")
        assert href is not None
        response = page.goto(live.base_url + href)
        assert response is not None and response.status == 200
        images = page.evaluate("[...document.images].map((i) => i.complete && i.naturalWidth > 0)")
        browser.close()
    assert images and all(images)  # the chart and the thumbnails are data: URIs the CSP lets in
    assert blocked == []
