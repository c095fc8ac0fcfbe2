"""The Telegram adapter end to end: the real aiogram Bot against a fake Bot API server, the real spine behind.

Answers come from the real OCR backend, so a reply containing a rendered scan's Chinese text proves the
photo travelled Telegram → download → upload store → queue → worker → reply.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from bench.render import render_text_image
from bots.core import utf16_length
from bots.telegram import TelegramBot
from db.models import Job
from service.app import App
from service.composition import build_service
from service.config import Config
from service.errors import PermanentError
from service.messages import msg
from tests import documents
from tests.conftest import wait_until
from tests.fake_telegram import FakeTelegram, fake_telegram, message, photo

TOKEN = "123456789:AAE-secret-Token_for_tests"
Start = Callable[..., tuple[App, TelegramBot]]


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    """The fake Bot API server."""
    with fake_telegram(TOKEN) as fake:
        yield fake


@pytest.fixture
def service(
    make_config: Callable[..., Config], backend_factory: Any, telegram: FakeTelegram
) -> Iterator[Start]:
    """Start the whole service with the Telegram bot pointed at the fake server."""
    apps: list[App] = []

    def start(
        *, token: str = TOKEN, ready: bool = True, text_limit: int = 0, **settings: Any
    ) -> tuple[App, TelegramBot]:
        values = {"enabled": True, "token": SecretStr(token), "api_base": telegram.url, **settings}
        app = build_service(make_config(watches=[], telegram=values), backend_factory=backend_factory)
        apps.append(app)
        (bot,) = app.sources
        assert isinstance(bot, TelegramBot)
        bot.album_window = 0.3
        if text_limit:
            bot.core.max_message_chars = text_limit
        app.start()
        app.worker.wait_ready(60)
        if ready:
            wait_until(bot.ready.is_set, timeout=10)
        return app, bot

    yield start
    for app in apps:
        app.stop()


def replies(fake: FakeTelegram, count: int, chat_id: int = 1001) -> list[str]:
    """Wait for `count` messages to `chat_id`; return them all."""
    wait_until(lambda: len(fake.texts(chat_id)) >= count, timeout=30)
    return fake.texts(chat_id)


def jobs(app: App) -> list[Job]:
    """The bot's jobs, oldest first."""
    return sorted(app.store.list_jobs(source="telegram"), key=lambda job: job.id)


def test_photo_then_follow_up(
    service: Start, telegram: FakeTelegram, scan_bytes: Callable[..., bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app, _bot = service()
    telegram.add_file("scan-1", scan_bytes())
    asked = message(caption="写了什么？", photo=photo("scan-1", 30_000))
    telegram.push(asked)
    (answer,) = replies(telegram, 1)
    assert "图问档案馆" in answer
    (sent,) = telegram.sent()
    assert sent["reply_parameters"]["message_id"] == asked["message_id"]
    assert any(call["action"] == "typing" for call in telegram.sent("sendChatAction"))
    assert telegram.downloads == ["scan-1"]  # the largest size only, never the thumbnail

    telegram.push(message(text="再读一遍"))
    assert "图问档案馆" in replies(telegram, 2)[1]
    first, second = jobs(app)
    assert (first.question, first.source_ref, first.reply_to) == (
        "写了什么？",
        "1001",
        str(asked["message_id"]),
    )
    assert second.images == first.images and second.history[0] == {"role": "user", "text": "写了什么？"}
    assert TOKEN not in caplog.text and TOKEN.split(":")[1] not in caplog.text


def test_commands_explain_and_start_over(service: Start, telegram: FakeTelegram) -> None:
    _app, bot = service()
    steps = [
        (message(text="/start"), msg("bot_help").zh),
        (message(text="/help", language="en"), msg("bot_help").en),
        (message(text="/new"), msg("bot_new").zh),
        (message(text="这是什么？"), msg("bot_need_photo").zh),
    ]
    for count, (sent, expected) in enumerate(steps, start=1):
        telegram.push(sent)
        assert replies(telegram, count)[-1] == expected
    started = time.monotonic()
    bot.stop()  # a long poll is in flight
    assert time.monotonic() - started < 3


def test_image_document_without_caption_gets_the_default_question(
    service: Start, telegram: FakeTelegram, scan_bytes: Callable[..., bytes]
) -> None:
    app, _bot = service(default_question="请读出图中文字")
    data = scan_bytes()
    telegram.add_file("doc-1", data)
    document = {"file_id": "doc-1", "file_unique_id": "d1", "mime_type": "image/jpeg", "file_size": len(data)}
    telegram.push(message(document=document))
    assert "图问档案馆" in replies(telegram, 1)[0]
    assert jobs(app)[0].question == "请读出图中文字"


def _pdf_scan(tmp: Path) -> bytes:
    return documents.scan_pdf(tmp / "scan.pdf", [["电报文件", "Telegram file"]]).read_bytes()


def _heic_photo(tmp: Path) -> bytes:
    return documents.photo_bytes(render_text_image(["电报文件", "Telegram file"], size=(600, 300)), "HEIF")


@pytest.mark.parametrize(
    ("file_name", "mime_type", "build"),
    [
        ("letter.pdf", "application/pdf", _pdf_scan),
        ("IMG_0042.HEIC", "application/octet-stream", _heic_photo),  # how phones often send HEIC files
    ],
)
def test_pdf_and_heic_documents_are_answered(
    service: Start,
    telegram: FakeTelegram,
    tmp_path: Path,
    file_name: str,
    mime_type: str,
    build: Callable[[Path], bytes],
) -> None:
    app, _bot = service()
    data = build(tmp_path)
    telegram.add_file("doc-9", data)
    document = {"file_id": "doc-9", "file_unique_id": "d9", "file_name": file_name, "mime_type": mime_type}
    telegram.push(message(document={**document, "file_size": len(data)}, caption="写了什么？"))
    assert "电报文件" in replies(telegram, 1)[0]
    assert Path(jobs(app)[0].images[0]).suffix == Path(file_name).suffix.lower()


def test_oversize_and_non_image_files_are_refused_before_download(
    service: Start, telegram: FakeTelegram
) -> None:
    app, _bot = service(max_file_mb=1)
    telegram.push(message(photo=photo("big", 2 * 1024 * 1024)))
    assert replies(telegram, 1) == [msg("bot_file_too_large", size_mb="2.0", limit_mb="1").zh]
    docx = {
        "file_id": "docx-1",
        "file_unique_id": "w1",
        "file_name": "notes.docx",
        "mime_type": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "file_size": 100,
    }
    telegram.push(message(document=docx, language="en"))
    assert replies(telegram, 2)[1] == msg("bot_not_image").en
    assert telegram.downloads == [] and telegram.sent("getFile") == [] and jobs(app) == []


def test_album_is_one_question_about_both_photos(
    service: Start, telegram: FakeTelegram, scan_bytes: Callable[..., bytes]
) -> None:
    app, _bot = service()
    telegram.add_file("a-1", scan_bytes(["第一页"]))
    telegram.add_file("a-2", scan_bytes(["第二页"]))
    telegram.push(message(media_group_id="album-9", photo=photo("a-1", 20_000)))
    captioned = message(media_group_id="album-9", photo=photo("a-2", 20_000), caption="两页写了什么？")
    telegram.push(captioned)
    (answer,) = replies(telegram, 1)
    assert "第一页" in answer and "第二页" in answer
    (job,) = jobs(app)
    assert job.question == "两页写了什么？" and len(job.images) == 2
    assert telegram.sent()[0]["reply_parameters"]["message_id"] == captioned["message_id"]


def test_allow_list_refuses_without_downloading(service: Start, telegram: FakeTelegram) -> None:
    app, _bot = service(allowed_user_ids=[5])
    telegram.push(message(photo=photo("stranger", 20_000), caption="这是什么？"))
    assert replies(telegram, 1) == [msg("bot_not_allowed", user_id="1001", chat_id="1001").zh]
    assert telegram.downloads == [] and jobs(app) == []


def test_rate_limit_refuses_the_second_question(
    service: Start, telegram: FakeTelegram, scan_bytes: Callable[..., bytes]
) -> None:
    app, _bot = service(rate_limit_per_minute=1)
    telegram.add_file("r-1", scan_bytes())
    telegram.push(message(photo=photo("r-1", 20_000)))
    replies(telegram, 1)
    telegram.push(message(text="再问一个"))
    assert replies(telegram, 2)[1].startswith("提问太频繁了（每分钟最多 1 次）")
    assert len(jobs(app)) == 1


def test_long_answer_is_split_into_replies(
    service: Start, telegram: FakeTelegram, scan_bytes: Callable[..., bytes]
) -> None:
    app, _bot = service(text_limit=40)
    telegram.add_file("long", scan_bytes())
    asked = message(photo=photo("long", 20_000))
    telegram.push(asked)
    wait_until(lambda: jobs(app) and jobs(app)[0].answer is not None)
    answer = jobs(app)[0].answer or ""
    expected = -(-utf16_length(answer) // 40)  # at least this many pieces
    pieces = replies(telegram, expected)
    time.sleep(0.3)  # any stray extra piece would arrive by now
    pieces = telegram.texts()
    assert all(utf16_length(piece) <= 40 for piece in pieces)
    assert "".join(pieces).replace("\n", "").replace(" ", "") == answer.replace("\n", "").replace(" ", "")
    assert {p["reply_parameters"]["message_id"] for p in telegram.sent()} == {asked["message_id"]}


def test_model_failure_gets_a_plain_reply(
    service: Start, telegram: FakeTelegram, scan_bytes: Callable[..., bytes], backend_factory: Any
) -> None:
    failure = msg("model_failed", reason="CUDA error")
    backend_factory.prepare = lambda backend: backend.failures.append(PermanentError(failure))
    service()
    telegram.add_file("f-1", scan_bytes())
    telegram.push(message(photo=photo("f-1", 20_000)))
    assert replies(telegram, 1) == [msg("bot_failed", reason=failure.zh).zh]


def test_group_answers_only_when_addressed(
    service: Start, telegram: FakeTelegram, scan_bytes: Callable[..., bytes]
) -> None:
    app, _bot = service()
    group: dict[str, Any] = {"chat_id": -100500, "chat_type": "supergroup"}
    telegram.add_file("g-ignored", scan_bytes())
    telegram.add_file("g-asked", scan_bytes())
    telegram.push(message(**group, photo=photo("g-ignored", 20_000), caption="大家看看"))
    mention = [{"type": "mention", "offset": 0, "length": 10}]
    telegram.push(message(**group, text="@tuwen_bot 你好", entities=mention))
    assert replies(telegram, 1, chat_id=-100500) == [msg("bot_need_photo").zh]
    bot_message = {
        "message_id": 1,
        "date": 0,
        "chat": {"id": -100500, "type": "supergroup"},
        "from": {"id": 4242, "is_bot": True, "first_name": "图问"},
        "text": "…",
    }
    telegram.push(message(**group, text="那这个呢？", reply_to_message=bot_message))
    assert replies(telegram, 2, chat_id=-100500)[1] == msg("bot_need_photo").zh
    caption = "@TUWEN_BOT 写了什么？"
    telegram.push(message(**group, photo=photo("g-asked", 20_000), caption=caption, caption_entities=mention))
    assert "图问档案馆" in replies(telegram, 3, chat_id=-100500)[2]
    (job,) = jobs(app)
    assert job.question == "写了什么？" and job.source_ref == "-100500"
    assert telegram.downloads == ["g-asked"]


def test_rejected_token_disables_the_bot_once(service: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "987654321:BBF-wrong-token_value"
    app, bot = service(token=wrong, ready=False)
    wait_until(lambda: bot.disabled, timeout=10)
    errors = [r for r in caplog.records if r.name == "tuwen.bots.telegram" and r.levelno >= logging.ERROR]
    assert (
        len(errors) == 1 and "Telegram" in errors[0].getMessage() and "Unauthorized" in errors[0].getMessage()
    )
    assert "停用" in errors[0].getMessage() and "disabled" in errors[0].getMessage()
    assert app.worker.alive and wrong.split(":")[1] not in caplog.text


def test_network_trouble_is_retried_and_recovery_logged(
    service: Start, telegram: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tuwen.bots.telegram")
    telegram.fail_next["getMe"] = 1
    _app, bot = service(ready=False)
    wait_until(bot.ready.is_set, timeout=15)
    lines = [r.getMessage() for r in caplog.records if r.name == "tuwen.bots.telegram"]
    assert sum("无法连接 Telegram" in line for line in lines) == 1
    assert sum("已重新连接 Telegram" in line for line in lines) == 1
    assert not bot.disabled


def test_webhook_mode_checks_the_secret_and_feeds_updates(service: Start, telegram: FakeTelegram) -> None:
    url = "https://tuwen.example.org/telegram/webhook"
    app, bot = service(mode="webhook", webhook_url=url, webhook_secret=SecretStr("s3cret-token"))
    (registered,) = telegram.sent("setWebhook")
    assert registered["url"] == url and registered["secret_token"] == "s3cret-token"
    http = FastAPI()
    for router in app.http_routers:
        http.include_router(router)
    update = {"update_id": 77, "message": message(text="/help")}
    with TestClient(http) as client:
        refused = client.post(
            "/telegram/webhook", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "nope"}
        )
        accepted = client.post(
            "/telegram/webhook", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-token"}
        )
    assert (refused.status_code, accepted.status_code) == (401, 200)
    assert replies(telegram, 1) == [msg("bot_help").zh]
    assert telegram.sent("getUpdates") == []


def test_webhook_mode_without_an_https_url_is_disabled(service: Start, telegram: FakeTelegram) -> None:
    _app, bot = service(mode="webhook", webhook_url="http://plain.example.org/hook", ready=False)
    assert bot.disabled and telegram.calls == []


def test_a_crash_in_the_bots_loop_restarts_it_and_it_answers_again(
    service: Start,
    telegram: FakeTelegram,
    scan_bytes: Callable[..., bytes],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_run = TelegramBot._run
    crashes = {"left": 1}

    async def flaky_run(self: TelegramBot, bot: Any, dispatcher: Any) -> None:
        if crashes["left"]:
            crashes["left"] -= 1
            raise RuntimeError("aiogram fell over")
        await real_run(self, bot, dispatcher)

    monkeypatch.setattr(TelegramBot, "_run", flaky_run)
    caplog.set_level(logging.ERROR, logger="tuwen.service.supervisor")
    _app, bot = service(ready=False)
    wait_until(bot.ready.is_set, timeout=30)  # the second life, after the supervisor's backoff
    telegram.add_file("scan-1", scan_bytes())
    telegram.push(message(caption="写了什么？", photo=photo("scan-1", 30_000)))
    assert "图问档案馆" in replies(telegram, 1)[0]
    status = bot.status()
    assert (status.restarts, status.state) == (1, "running")
    crashed = [r.getMessage() for r in caplog.records if "crashed" in r.getMessage()]
    assert crashed and "telegram" in crashed[0]
