"""The shared chat core against the real spine (queue, worker, OCR backend), and `split_message`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bots.core import ChatCore, IncomingMessage, split_message, utf16_length
from db.models import Job
from service.app import App
from service.composition import build_service
from service.config import Config
from service.errors import PermanentError
from service.events import Event, Priority
from service.messages import msg, render

Spine = Callable[..., tuple[App, ChatCore]]


@pytest.fixture
def spine(make_config: Callable[..., Config], backend_factory: Any) -> Iterator[Spine]:
    """Start an App (worker with the real OCR backend, no sources) and a ChatCore on its queue."""
    apps: list[App] = []

    def start(*, run: bool = True, http: dict[str, Any] | None = None, **bot: Any) -> tuple[App, ChatCore]:
        config = make_config(
            watches=[], telegram={"enabled": True, **bot}, **({"http": http} if http else {})
        )
        # The bot under test is built by the test itself: the service gets a config without it.
        bare = config.model_copy(update={"telegram": config.telegram.model_copy(update={"enabled": False})})
        app = build_service(bare, backend_factory=backend_factory)
        apps.append(app)
        if run:
            app.start()
            app.worker.wait_ready(60)
        core = ChatCore("telegram", config.telegram, app.queue, config, max_message_chars=4096)
        return app, core

    yield start
    for app in apps:
        app.stop()


def incoming(text: str = "", images: tuple[bytes, ...] = (), **fields: Any) -> IncomingMessage:
    """A private message from user 7 in chat 7."""
    return IncomingMessage(
        **{"platform": "telegram", "chat_id": "7", "user_id": "7", "text": text, "images": images, **fields}
    )


def jobs(app: App) -> list[Job]:
    """The bot's jobs, oldest first."""
    return sorted(app.store.list_jobs(source="telegram"), key=lambda job: job.id)


def test_photo_with_caption_asks_the_caption(spine: Spine, scan_bytes: Callable[..., bytes]) -> None:
    app, core = spine()
    replies = asyncio.run(core.handle(incoming("写了什么？", (scan_bytes(),), message_id="55")))
    assert any("图问档案馆" in reply for reply in replies)
    (job,) = jobs(app)
    assert (job.question, job.source, job.source_ref, job.reply_to) == ("写了什么？", "telegram", "7", "55")
    assert job.priority == Priority.INTERACTIVE
    assert job.conversation_id is not None and job.conversation_id.startswith("telegram:7:7:")
    assert Path(job.images[0]).is_file() and "uploads" in job.images[0]


def test_photo_alone_asks_the_default_question(spine: Spine, scan_bytes: Callable[..., bytes]) -> None:
    app, core = spine(default_question="图里有什么？")
    asyncio.run(core.handle(incoming(images=(scan_bytes(),))))
    assert jobs(app)[0].question == "图里有什么？"


def test_follow_ups_keep_the_images_send_the_history_and_are_limited(
    spine: Spine, scan_bytes: Callable[..., bytes]
) -> None:
    app, core = spine(max_turns=1)

    async def talk() -> tuple[list[str], list[str]]:
        await core.handle(incoming("第一问", (scan_bytes(),)))
        follow_up = await core.handle(incoming("第二问"))
        return follow_up, await core.handle(incoming("第三问"))

    follow_up, refused = asyncio.run(talk())
    first, second = jobs(app)
    assert any("图问档案馆" in reply for reply in follow_up)
    assert second.images == first.images and second.conversation_id == first.conversation_id
    assert second.history == [
        {"role": "user", "text": "第一问"},
        {"role": "assistant", "text": first.answer},
    ]
    assert refused == [msg("bot_max_turns", n=1).zh]


def test_album_is_one_question_about_every_photo(spine: Spine, scan_bytes: Callable[..., bytes]) -> None:
    app, core = spine()
    parts = [
        incoming(images=(scan_bytes(["第一页"]),)),
        incoming("两页各写了什么？", (scan_bytes(["第二页"]),)),
    ]
    replies = asyncio.run(core.handle_album(parts))
    (job,) = jobs(app)
    assert job.question == "两页各写了什么？" and len(job.images) == 2
    assert "第一页" in "".join(replies) and "第二页" in "".join(replies)


@pytest.mark.parametrize(
    ("text", "lang", "code"),
    [
        ("这是什么？", "zh", "bot_need_photo"),
        ("what is this?", "en", "bot_need_photo"),
        ("/start", "zh", "bot_help"),
        ("/help@tuwen_bot", "en", "bot_help"),
        ("/new", "zh", "bot_new"),
        ("新对话", "zh", "bot_new"),
        ("/unknown", "zh", "bot_help"),
    ],
)
def test_commands_and_text_without_photo(spine: Spine, text: str, lang: str, code: str) -> None:
    app, core = spine(run=False)
    replies = asyncio.run(core.handle(incoming(text, lang=lang)))
    expected = msg(code)
    assert replies == [expected.en if lang == "en" else expected.zh]
    assert jobs(app) == []


def test_new_conversation_forgets_the_photo(spine: Spine, scan_bytes: Callable[..., bytes]) -> None:
    app, core = spine()

    async def talk() -> list[str]:
        await core.handle(incoming(images=(scan_bytes(),)))
        await core.handle(incoming("新对话"))
        return await core.handle(incoming("还有呢？"))

    assert asyncio.run(talk()) == [msg("bot_need_photo").zh]


def test_idle_conversation_expires(spine: Spine, scan_bytes: Callable[..., bytes]) -> None:
    app, core = spine(conversation_minutes=0.005)  # 0.3 s

    async def talk() -> list[str]:
        await core.handle(incoming(images=(scan_bytes(),)))
        await asyncio.sleep(0.4)
        return await core.handle(incoming("还在吗？"))

    assert asyncio.run(talk()) == [msg("bot_need_photo").zh]


@pytest.mark.parametrize("lists", [{"allowed_user_ids": ["8"]}, {"allowed_chat_ids": ["-100"]}])
def test_allow_lists_refuse_with_the_ids(
    spine: Spine, scan_bytes: Callable[..., bytes], lists: dict[str, Any]
) -> None:
    app, core = spine(run=False, **lists)
    replies = asyncio.run(core.handle(incoming("这是什么？", (scan_bytes(),))))
    assert replies == [msg("bot_not_allowed", user_id="7", chat_id="7").zh]
    assert jobs(app) == []


def test_rate_limit_is_per_user(spine: Spine, scan_bytes: Callable[..., bytes]) -> None:
    app, core = spine(rate_limit_per_minute=1)

    async def talk() -> tuple[list[str], list[str]]:
        await core.handle(incoming(images=(scan_bytes(),)))
        refused = await core.handle(incoming("再问", lang="en"))
        return refused, await core.handle(incoming(images=(scan_bytes(),), user_id="9"))

    refused, other_user = asyncio.run(talk())
    assert refused[0].startswith("Too many questions (at most 1 a minute)")
    assert "图问档案馆" in "".join(other_user)
    assert len(jobs(app)) == 2


def test_group_messages_need_the_bot_addressed(spine: Spine, scan_bytes: Callable[..., bytes]) -> None:
    app, core = spine(allowed_user_ids=["8"])  # even a refusal would be noise in a group
    silent = asyncio.run(core.handle(incoming("大家好", (scan_bytes(),), is_group=True, addressed=False)))
    assert silent == [] and jobs(app) == []


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_model_failure_is_replied_in_the_users_language(
    spine: Spine, scan_bytes: Callable[..., bytes], backend_factory: Any, lang: str
) -> None:
    backend_factory.prepare = lambda backend: backend.failures.append(
        PermanentError(msg("model_failed", reason="boom"))
    )
    app, core = spine()
    (reply,) = asyncio.run(core.handle(incoming(images=(scan_bytes(),), lang=lang)))
    expected = msg(
        "bot_failed",
        reason=msg("model_failed", reason="boom").en
        if lang == "en"
        else msg("model_failed", reason="boom").zh,
    )
    assert reply == (expected.en if lang == "en" else expected.zh)


def test_undecodable_image_is_explained_and_forgotten(spine: Spine) -> None:
    app, core = spine()

    async def talk() -> tuple[list[str], list[str]]:
        first = await core.handle(incoming(images=(b"this is not an image",)))
        return first, await core.handle(incoming("再看看？"))

    first, second = asyncio.run(talk())
    assert first == [msg("bot_failed", reason=msg("image_not_image").zh).zh]
    assert second == [msg("bot_need_photo").zh]


def test_full_queue_refuses(spine: Spine, scan_bytes: Callable[..., bytes]) -> None:
    app, core = spine(run=False, http={"max_queue": 1})  # no worker running: the queued job stays waiting
    app.queue.submit(Event(source="api", question="q", images=(), priority=Priority.INTERACTIVE))
    assert asyncio.run(core.handle(incoming(images=(scan_bytes(),)))) == [msg("bot_busy").zh]


def test_model_down_is_replied_at_once(
    spine: Spine, scan_bytes: Callable[..., bytes], backend_factory: Any
) -> None:
    def broken(backend: Any) -> None:
        def load() -> None:
            raise PermanentError(msg("model_load_failed", path="x", reason="missing"))

        backend.load = load

    backend_factory.prepare = broken
    app, core = spine()
    assert asyncio.run(core.handle(incoming(images=(scan_bytes(),)))) == [msg("bot_model_down").zh]


def test_slow_answer_times_out_with_a_reply(
    spine: Spine, scan_bytes: Callable[..., bytes], backend_factory: Any
) -> None:
    def slow(backend: Any) -> None:
        backend.delay = 0.8
        backend.failures.append(PermanentError(msg("model_failed", reason="late")))  # spares an OCR run

    backend_factory.prepare = slow
    app, core = spine(answer_timeout_seconds=0.2)
    started = time.monotonic()
    replies = asyncio.run(core.handle(incoming(images=(scan_bytes(),))))
    assert replies == [msg("bot_timeout", seconds="0.2").zh]
    assert time.monotonic() - started < 0.7


def test_a_stored_error_is_rendered_in_the_users_language_even_with_a_slash_in_it() -> None:
    stored = msg("image_unreadable", reason="a / b")
    again = render(stored.code, stored.json_params(), str(stored))
    assert again.text("zh") == "无法读取文件：a / b"
    assert again.text("en") == "cannot read file: a / b"
    legacy = render("image_unreadable", None, str(stored))  # a row from before parameters were stored
    assert legacy.text("zh").startswith("无法读取文件")


# -- split_message ---------------------------------------------------------------------------------


def test_short_and_empty_text() -> None:
    assert split_message("你好", 10) == ["你好"]
    assert split_message("  \n ", 10) == []
    with pytest.raises(ValueError):
        split_message("x", 0)


def test_splits_on_paragraphs_first() -> None:
    text = "第一段第一句。第一段第二句。\n\n第二段只有一句。"
    assert split_message(text, 16) == ["第一段第一句。第一段第二句。", "第二段只有一句。"]


def test_splits_on_chinese_sentences_and_keeps_closing_quotes() -> None:
    text = "他说：“好。”然后走了！最后呢？没有了；结束"
    pieces = split_message(text, 9)
    assert pieces[0] == "他说：“好。”" and all(len(p) <= 9 for p in pieces)
    assert "".join(pieces) == text


def test_english_sentences_but_not_decimal_points() -> None:
    pieces = split_message("Pi is 3.14159 roughly. That is all.", 24)
    assert pieces == ["Pi is 3.14159 roughly.", "That is all."]


def test_text_without_any_boundary_is_cut_hard() -> None:
    text = "图问" * 25
    pieces = split_message(text, 7)
    assert all(len(p) <= 7 for p in pieces) and "".join(pieces) == text


@pytest.mark.parametrize(
    "unit",
    ["👍🏽", "👨\u200d👩\u200d👧", "🇨🇳", "e\u0301", "❤\ufe0f", "1\ufe0f\u20e3"],
    ids=["skin-tone", "zwj-family", "flag", "combining", "variation", "keycap"],
)
def test_graphemes_are_never_split_counting_utf16(unit: str) -> None:
    text = unit * 9
    limit = utf16_length(unit) * 2 + 1  # room for two, never for a third
    pieces = split_message(text, limit, utf16_length)
    assert pieces == [unit * 2] * 4 + [unit]
    assert all(utf16_length(p) <= limit for p in pieces)


def test_emoji_mixed_with_chinese_counts_utf16_units() -> None:
    text = "好😀" * 50  # 3 UTF-16 units each pair
    pieces = split_message(text, 10, utf16_length)
    assert all(utf16_length(p) <= 10 for p in pieces) and "".join(pieces) == text
    assert all(p.encode("utf-16-le").decode("utf-16-le") == p for p in pieces)
