"""WeChat through wechaty: the real `Wechaty` in the real child process, bridged into the real spine.

The WeChat network and a puppet-service gateway cannot run here, so the one fake is at that boundary:
wechaty's own `FakePuppet`, subclassed to deliver a scripted conversation (its image and send methods are
stubs upstream). Everything between it and the OCR backend is the production path. The test process itself
never imports wechaty (importing it creates `$CACHE_DIR`); only the child does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from bots.wechat import WeChatBot, guess_lang
from db.models import JobStatus
from service.app import App
from service.composition import build_service
from tests.conftest import wait_until

needs_wechaty = pytest.mark.skipif(
    importlib.util.find_spec("wechaty") is None,
    reason="python-wechaty not installed (optional extra): pip install -e '.[wechat]'",
)

ALICE, BOB, ROOM, SELF = "wxid_alice", "wxid_bob", "archive-group@chatroom", "wxid_tuwen"
SCAN_LINES = ["图问档案馆", "WeChat 1958"]
REPLY_WAIT_SECONDS = 30.0


# --- the scripted puppet (runs in the wechaty child process) --------------------------------------------


def make_scripted_puppet(options: Any, cache_dir: Path) -> Any:
    """`ChildSettings.puppet_factory` target: a FakePuppet that plays the conversation below."""
    from wechaty.fake_puppet import FakePuppet
    from wechaty_puppet import ContactPayload, FileBox, MessagePayload, MessageType, RoomPayload
    from wechaty_puppet.schemas.event import EventLoginPayload, EventMessagePayload

    class ScriptedPuppet(FakePuppet):  # type: ignore[misc]
        """Private chat: photo, then a follow-up. Group: chatter, a photo, then an @-mention asking."""

        def __init__(self) -> None:
            super().__init__(options)
            self.login_user_id = SELF
            for contact_id, name in ((SELF, "图问"), (ALICE, "Alice"), (BOB, "Bob")):
                self.add_fake_contact(ContactPayload(id=contact_id, name=name, friend=True))
            self.add_fake_room(
                RoomPayload(id=ROOM, topic="档案馆", member_ids=[ALICE, BOB, SELF], owner_id=BOB)
            )
            self.scan = (cache_dir / "scan.jpg").read_bytes()
            self.sent = asyncio.Event()
            self.step = 0

        def record(self, entry: dict[str, Any]) -> None:
            with (cache_dir / "sent.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")

        async def deliver(self, *, expect_reply: bool, **fields: Any) -> None:
            self.step += 1
            payload = MessagePayload(id=uuid.uuid4().hex, timestamp=int(time.time()), **fields)
            self.add_fake_message(payload)
            self.sent.clear()
            self.emitter.emit("message", EventMessagePayload(message_id=payload.id))
            if expect_reply:
                try:
                    await asyncio.wait_for(self.sent.wait(), REPLY_WAIT_SECONDS)
                except TimeoutError:
                    self.record({"step": self.step, "timeout": True})
            else:
                await asyncio.sleep(0.5)  # a wrong reply would arrive (and be recorded) by now

        async def start(self) -> None:
            self.emitter.emit("login", EventLoginPayload(contact_id=SELF))
            image, text = MessageType.MESSAGE_TYPE_IMAGE, MessageType.MESSAGE_TYPE_TEXT
            await self.deliver(from_id=ALICE, to_id=SELF, type=image, expect_reply=True)
            await self.deliver(
                from_id=ALICE, to_id=SELF, type=text, text="上面写的是什么字？", expect_reply=True
            )
            await self.deliver(from_id=BOB, room_id=ROOM, type=text, text="大家好", expect_reply=False)
            await self.deliver(from_id=BOB, room_id=ROOM, type=image, expect_reply=False)
            await self.deliver(
                from_id=BOB,
                room_id=ROOM,
                type=text,
                text="@图问\u2005这是什么？",
                mention_ids=[SELF],
                expect_reply=True,
            )
            self.record({"done": True})
            await asyncio.Event().wait()  # like a gateway: connected until stopped

        async def message_image(self, message_id: str, image_type: object = None) -> Any:
            # A gateway hands images over as a base64 FileBox.
            return FileBox.from_base64(base64.b64encode(self.scan), name=f"{message_id}.jpg")

        async def message_send_text(
            self, conversation_id: str, message: str, mention_ids: list[str] | None = None
        ) -> str:
            self.record({"step": self.step, "to": conversation_id, "text": message, "mentions": mention_ids})
            sent_id = uuid.uuid4().hex
            in_room = conversation_id == ROOM
            self.add_fake_message(
                MessagePayload(
                    id=sent_id,
                    from_id=SELF,
                    room_id=conversation_id if in_room else "",
                    to_id="" if in_room else conversation_id,
                    text=message,
                    type=MessageType.MESSAGE_TYPE_TEXT,
                )
            )
            self.sent.set()
            return sent_id

        async def room_member_payload(self, room_id: str, contact_id: str) -> Any:
            return None  # no group nicknames (upstream pops the payload, so a second look would fail)

    return ScriptedPuppet()


# --- tests -------------------------------------------------------------------------------------------------


def read_sent(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@needs_wechaty
def test_photo_follow_up_and_group_mention_reach_the_spine(
    make_config: Callable[..., Any], backend_factory: Callable[..., Any], scan_bytes: Callable[..., bytes]
) -> None:
    config = make_config(watches=[])
    app = build_service(config, backend_factory=backend_factory)
    cache_dir = config.storage.data_dir / "wechaty"
    cache_dir.mkdir(parents=True)
    (cache_dir / "scan.jpg").write_bytes(scan_bytes(SCAN_LINES))
    bot = WeChatBot(config, app.queue, puppet_factory="tests.test_wechat:make_scripted_puppet")
    app.sources.append(bot)
    app.start()
    try:
        wait_until(lambda: any(e.get("done") for e in read_sent(cache_dir / "sent.jsonl")), timeout=50)
        jobs = sorted(app.store.list_jobs(source="wechat", limit=10), key=lambda job: job.id)
    finally:
        app.stop()
    sent = read_sent(cache_dir / "sent.jsonl")
    assert [e for e in sent if e.get("timeout")] == []
    replies = [e for e in sent if "to" in e]
    assert [(e["step"], e["to"]) for e in replies] == [(1, ALICE), (2, ALICE), (5, ROOM)]
    assert SCAN_LINES[0] in replies[0]["text"]
    # The group answer is about Bob's photo, addressed to Bob; the chatter before it got no reply.
    assert replies[2]["text"].startswith("@Bob") and SCAN_LINES[0] in replies[2]["text"]
    assert replies[2]["mentions"] == [BOB]
    assert [job.status for job in jobs] == [JobStatus.DONE] * 3
    first, follow_up, group = jobs
    assert follow_up.conversation_id == first.conversation_id
    assert [turn["role"] for turn in follow_up.history] == ["user", "assistant"]
    assert follow_up.history[1]["text"] == first.answer
    assert follow_up.question == "上面写的是什么字？"
    assert (group.source_ref, group.question, group.history) == (ROOM, "这是什么？", [])
    assert group.conversation_id != first.conversation_id
    assert not (Path.cwd() / ".wechaty").exists()  # wechaty's cache went under data_dir


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@needs_wechaty
def test_gateway_down_never_stops_the_service(
    make_config: Callable[..., Any],
    backend_factory: Callable[..., Any],
    scan_bytes: Callable[..., bytes],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="tuwen.bots.wechat")
    config = make_config(
        wechat={"enabled": True, "endpoint": f"127.0.0.1:{unused_port()}", "reconnect_max_seconds": 4.0}
    )

    async def serve() -> tuple[WeChatBot, App, float]:
        # The service's own loop: wechaty's `loop.stop()` on a dead gateway must not be able to reach it.
        app = build_service(config, backend_factory=backend_factory)
        bot = next(source for source in app.sources if isinstance(source, WeChatBot))
        app.start()
        try:
            await asyncio.to_thread(wait_until, lambda: bot.failed_attempts >= 3, 30)
            (tmp_path / "inbox" / "scan.jpg").write_bytes(scan_bytes(SCAN_LINES))
            done = await asyncio.to_thread(
                wait_until, lambda: app.store.list_jobs(status=JobStatus.DONE, source="watch"), 30
            )
            assert SCAN_LINES[0] in (done[0].answer or "")  # type: ignore[index]
            await asyncio.sleep(0.05)  # still scheduling: the loop was not stopped
            started = time.monotonic()
            bot.stop()
            return bot, app, time.monotonic() - started
        finally:
            app.stop()

    bot, app, stop_seconds = asyncio.run(serve())
    assert stop_seconds < 5.0
    assert bot.retry_delays[:3] == [1.0, 2.0, 4.0]  # exponential, capped at reconnect_max_seconds
    assert not bot.online
    levels = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "tuwen.bots.wechat"]
    warnings = [text for level, text in levels if level == "WARNING"]
    assert len(warnings) == 1 and "cannot reach WeChat" in warnings[0]
    assert not [text for _, text in levels if "reachable again" in text]


@pytest.mark.parametrize(
    ("text", "lang"), [("What is this?", "en"), ("这是什么？", "zh"), ("", "zh"), ("1958 年 photo", "zh")]
)
def test_language_is_guessed_from_the_text(text: str, lang: str) -> None:
    assert guess_lang(text) == lang


# --- a puppet-service gateway that comes back -------------------------------------------------------------


class MinimalGateway:
    """The three calls of wechaty's gRPC puppet service that a connection needs, on a real grpclib server."""

    def __init__(self, *, reject: bool = False) -> None:
        self.closing = asyncio.Event()
        self.reject = reject  # answer every call as a gateway that does not know our token

    def check_token(self) -> None:
        from grpclib.const import Status
        from grpclib.exceptions import GRPCError

        if self.reject:
            raise GRPCError(Status.UNAUTHENTICATED, "unknown token")

    def __mapping__(self) -> dict[str, Any]:
        from grpclib.const import Cardinality, Handler
        from wechaty_grpc.wechaty import puppet as pb

        async def start(stream: Any) -> None:
            await stream.recv_message()
            self.check_token()
            await stream.send_message(pb.StartResponse())

        async def stop(stream: Any) -> None:
            await stream.recv_message()
            self.check_token()
            await stream.send_message(pb.StopResponse())

        async def events(stream: Any) -> None:
            await stream.recv_message()
            dong = pb.EventResponse(type=pb.EventType.EVENT_TYPE_DONG, payload=json.dumps({"data": "hi"}))
            await stream.send_message(dong)
            await self.closing.wait()  # the event stream stays open while the gateway runs

        unary = Cardinality.UNARY_UNARY
        return {
            "/wechaty.Puppet/Start": Handler(start, unary, pb.StartRequest, pb.StartResponse),
            "/wechaty.Puppet/Stop": Handler(stop, unary, pb.StopRequest, pb.StopResponse),
            "/wechaty.Puppet/Event": Handler(
                events, Cardinality.UNARY_STREAM, pb.EventRequest, pb.EventResponse
            ),
        }


@contextlib.contextmanager
def running_gateway(port: int, *, reject: bool = False) -> Iterator[None]:
    """Serve `MinimalGateway` on 127.0.0.1:port from a thread with its own loop."""
    from grpclib.server import Server

    ready, finish = threading.Event(), threading.Event()

    async def serve() -> None:
        gateway = MinimalGateway(reject=reject)
        server = Server([gateway])
        await server.start("127.0.0.1", port)
        ready.set()
        await asyncio.to_thread(finish.wait)
        gateway.closing.set()
        server.close()
        await server.wait_closed()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        finish.set()
        thread.join(10)


@needs_wechaty
def test_gateway_back_is_logged_recovered_once(
    make_config: Callable[..., Any], backend_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tuwen.bots.wechat")
    port = unused_port()
    # make_config copies without validating: the token must already be a SecretStr.
    wechat = {"enabled": True, "endpoint": f"127.0.0.1:{port}", "token": SecretStr("gateway-token")}
    config = make_config(watches=[], wechat={**wechat, "reconnect_max_seconds": 2.0})
    app = build_service(config, backend_factory=backend_factory)
    bot = next(source for source in app.sources if isinstance(source, WeChatBot))
    app.start()
    try:
        wait_until(lambda: bot.failed_attempts >= 2, 20)
        with running_gateway(port):
            wait_until(lambda: bot.online, 20)
            bot.stop()  # while the gateway is up, so its going away is not a second outage
    finally:
        app.stop()
    texts = [r.getMessage() for r in caplog.records if r.name == "tuwen.bots.wechat"]
    assert len([t for t in texts if "cannot reach WeChat" in t]) == 1
    assert len([t for t in texts if "WeChat reachable again" in t]) == 1


@needs_wechaty
def test_rejected_token_disables_the_adapter_and_says_so_once(
    make_config: Callable[..., Any], backend_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    port = unused_port()
    wechat = {"enabled": True, "endpoint": f"127.0.0.1:{port}", "token": SecretStr("revoked-token")}
    config = make_config(watches=[], wechat=wechat)
    app = build_service(config, backend_factory=backend_factory)
    bot = next(source for source in app.sources if isinstance(source, WeChatBot))
    with running_gateway(port, reject=True):
        app.start()
        try:
            wait_until(lambda: not bot.running, 20)  # no retry loop: a rejected token stays rejected
        finally:
            app.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "WeChat bot credentials were rejected" in errors[0]
    assert "revoked-token" not in caplog.text
    assert bot.failed_attempts == 0 and not bot.online


# --- adapters that cannot start say so once and leave the service alone ----------------------------------


@pytest.mark.parametrize(
    ("wechat", "missing_library", "expected"),
    [
        ({"endpoint": "127.0.0.1:1"}, True, "pip install '.[wechat]'"),
        ({}, False, "[wechat] endpoint and token are empty"),
    ],
    ids=["extra-not-installed", "no-gateway-configured"],
)
def test_cannot_start_logs_one_error_and_returns(
    make_config: Callable[..., Any],
    backend_factory: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    wechat: dict[str, Any],
    missing_library: bool,
    expected: str,
) -> None:
    monkeypatch.delenv("WECHATY_PUPPET_SERVICE_TOKEN", raising=False)
    monkeypatch.delenv("WECHATY_PUPPET_SERVICE_ENDPOINT", raising=False)
    if missing_library:
        monkeypatch.setitem(sys.modules, "wechaty", None)  # what `import wechaty` sees without the extra
    config = make_config(wechat={"enabled": True, **wechat})
    app = build_service(config, backend_factory=backend_factory)
    bot = next(source for source in app.sources if isinstance(source, WeChatBot))
    app.start()
    try:
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and expected in errors[0] and " / " in errors[0]  # both languages
        assert not bot.running and bot in app._started
    finally:
        app.stop()
