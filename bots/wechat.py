"""Personal WeChat through wechaty (optional extra: `pip install '.[wechat]'`), the service-side half.

python-wechaty is unmaintained and rough at the edges: on a puppet error `Wechaty.start()` calls
`loop.stop()` on whatever loop runs it, its endpoint probe is a blocking telnet, a token-only setup does an
HTTP request with no timeout, and its import creates directories and needs compatibility patches. None of
that may reach the service, so wechaty runs in its own process (`bots.wechat_child`, started with the
"spawn" context: a fresh interpreter, nothing forked from the service's threads). If that process hangs,
crashes or exits, this side sees the pipe close and starts a new one after a backoff; `stop()` asks it to
stop and terminates it if it does not.

The pipe protocol (one duplex `multiprocessing.Pipe`, tuples of plain picklable values):

    child -> parent  ("state", {"state": "online" | "unavailable" | "fatal", "reason": str, "retry_in": s})
                     ("message", request_id: int, fields: dict)   # IncomingMessage fields but platform, lang
                     ("said", say_id: int, error: str)            # "" = sent
    parent -> child  ("reply", request_id, texts: list[str])        # [] = stay silent
                     ("say", say_id: int, contact_or_room_id: str, text: str)   # unprompted (reports)
                     ("stop",)

The conversation logic stays here, in `bots.core.ChatCore`, next to the queue; the child only translates.
"unavailable" is logged once and "recovered" once, however many retries lie between.

Groups: WeChat cannot @-mention the bot in a photo, so a photo in a group is kept (per group and sender,
for `conversation_minutes`) and asked about when that sender next mentions the bot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import itertools
import logging
import multiprocessing
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bots.core import ChatCore, IncomingMessage, split_message
from bots.wechat_child import INITIAL_RETRY_SECONDS, ChildSettings, run_child
from service.config import Config
from service.messages import msg
from service.queue import JobQueue
from service.retry import Backoff
from service.sources import NotifyError
from service.supervisor import ComponentStatus, Supervisor

log = logging.getLogger(f"tuwen.{__name__}")

# WeChat itself takes long texts, but gateways differ and long bubbles are hard to read on a phone; the
# margin leaves room for the "@name " that a group reply starts with.
MAX_MESSAGE_CHARS = 1800
# Photos kept per sender in a group while waiting for the mention that asks about them.
MAX_GROUP_PHOTOS = 9
CHILD_STOP_SECONDS = 2.0
SAY_TIMEOUT_SECONDS = 60.0
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def guess_lang(text: str) -> str:
    """WeChat tells us no language: English for Latin-only text, Chinese otherwise (and for photos)."""
    return "en" if _LATIN.search(text) and not _CJK.search(text) else "zh"


@dataclass
class _GroupPhotos:
    images: list[bytes] = field(default_factory=list)
    at: float = field(default_factory=time.monotonic)


class WeChatBot:
    """The `[wechat]` source: supervises the wechaty process and answers its messages with `ChatCore`."""

    name = "wechat"
    platform = "wechat"  # a `service.sources.Notifier`: reports are sent as text (the bridge sends no files)
    attachments: frozenset[str] = frozenset()

    def __init__(self, config: Config, queue: JobQueue, *, puppet_factory: str | None = None) -> None:
        self.config = config
        self.settings = config.wechat
        self.core = ChatCore("wechat", config.wechat, queue, config, max_message_chars=MAX_MESSAGE_CHARS)
        self.puppet_factory = puppet_factory  # tests only; see ChildSettings
        self.online = False
        self.failed_attempts = 0  # connection attempts the child reported as failed
        self.retry_delays: list[float] = []
        self._unavailable = False
        self._fatal = False
        self._fatal_reason: str | None = None
        self._last_reason: str | None = None
        self._photos: dict[tuple[str, str], _GroupPhotos] = {}
        self._stopping = threading.Event()
        self.problem: str | None = None  # why it did not start, for /health
        self.supervisor = Supervisor(
            "wechat",
            lambda stop: asyncio.run(self._supervise()),
            backoff=Backoff(base=2.0, cap=120.0),
            max_restarts=10,
            window_seconds=600.0,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._conn: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._say_ids = itertools.count(1)
        self._said: dict[int, asyncio.Future[str]] = {}

    # -- Source ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start supervising the wechaty process; never blocks, never raises for a missing extra."""
        if importlib.util.find_spec("wechaty") is None:
            self.problem = str(msg("wechat_not_installed", reason="No module named 'wechaty'"))
            log.error("%s", self.problem)
            return
        token = self.settings.token.get_secret_value()
        from_env = os.environ.get("WECHATY_PUPPET_SERVICE_TOKEN") or os.environ.get(
            "WECHATY_PUPPET_SERVICE_ENDPOINT"
        )
        if not (token or self.settings.endpoint or from_env or self.puppet_factory):
            self.problem = str(msg("wechat_not_configured", reason="[wechat] endpoint and token are empty"))
            log.error("%s", self.problem)
            return
        self._stopping.clear()
        self.supervisor.start()

    @property
    def running(self) -> bool:
        """Whether the bridge (and so a wechaty process, or a wait to restart one) is running."""
        return self.supervisor.alive

    def status(self) -> ComponentStatus:
        """The bot's state for `/health` and `/metrics`."""
        s = self.supervisor
        if self.problem is not None:
            return ComponentStatus(self.name, "wechat", "disabled", s.restarts, self.problem, s.since)
        if self._fatal:
            return ComponentStatus(self.name, "wechat", "failed", s.restarts, self._fatal_reason, s.since)
        state = s.state
        if state in ("starting", "running"):
            state = "running" if self.online else ("unavailable" if self._unavailable else "starting")
        return ComponentStatus(self.name, "wechat", state, s.restarts, self._last_reason or s.error, s.since)

    def stop(self) -> None:
        """Stop the wechaty process and the bridge; returns within a few seconds."""
        self._stopping.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(wake.set)
        if self.supervisor.alive and not self.supervisor.stop(CHILD_STOP_SECONDS + 3.0):
            log.warning("WeChat bridge did not stop in time; leaving it to exit with the service")

    def notify(
        self, recipient: str, text: str, *, image: Path | None = None, document: Path | None = None
    ) -> None:
        """Send `text` to a contact or room id through the wechaty process; blocks; raises `NotifyError`.

        Text only: `image` and `document` are ignored (`attachments` is empty, so delivery never asks).
        """
        loop = self._loop
        if loop is None or not self.online:
            raise NotifyError("the WeChat gateway is not connected", permanent=self._fatal)
        for part in split_message(text, MAX_MESSAGE_CHARS, len) if text else []:
            future = asyncio.run_coroutine_threadsafe(self._say(recipient, part), loop)
            try:
                error = future.result(SAY_TIMEOUT_SECONDS + 5)
            except Exception as exc:
                future.cancel()
                raise NotifyError(f"{type(exc).__name__}: {exc}") from None
            if error:
                raise NotifyError(error)

    async def _say(self, recipient: str, text: str) -> str:
        """Ask the child to send; its error ('' when sent). Runs on the bridge loop, like every `_send`."""
        say_id = next(self._say_ids)
        said: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._said[say_id] = said
        self._send(("say", say_id, recipient, text))
        try:
            return await asyncio.wait_for(said, SAY_TIMEOUT_SECONDS)
        finally:
            self._said.pop(say_id, None)

    # -- supervision -----------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        # Our own loop on the supervisor's thread: ChatCore awaits jobs here, nothing wechaty does can stop
        # it, and an exception restarts the bridge with backoff.
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self._stopping.is_set():  # stop() ran before the loop existed and could not wake it
            self._wake.set()
        backoff = Backoff(base=INITIAL_RETRY_SECONDS, cap=self.settings.reconnect_max_seconds, jitter=0)
        while not self._stopping.is_set():
            started = time.monotonic()
            code = await self._run_child()
            if self._stopping.is_set() or self._fatal:
                break
            if time.monotonic() - started > self.settings.reconnect_max_seconds:
                backoff.reset()  # it ran for a long while: a fresh crash gets a quick restart
            delay = backoff.next_delay()
            self._on_state(
                {"state": "unavailable", "reason": f"wechaty process exited ({code})", "retry_in": delay}
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
        for task in list(self._tasks):
            task.cancel()

    async def _run_child(self) -> int | None:
        """Run one wechaty process until it exits or we stop; its exit code."""
        assert self._loop is not None and self._wake is not None
        loop = self._loop
        context = multiprocessing.get_context("spawn")
        parent_conn, child_conn = context.Pipe()
        process = context.Process(
            target=run_child, args=(child_conn, self._child_settings()), name="tuwen-wechat", daemon=True
        )
        process.start()
        child_conn.close()
        self._conn = parent_conn
        closed: asyncio.Future[Any] = loop.create_future()

        def readable() -> None:
            try:
                while parent_conn.poll():
                    self._dispatch(parent_conn.recv())
            except (EOFError, OSError):
                loop.remove_reader(parent_conn.fileno())
                if not closed.done():
                    closed.set_result(None)

        loop.add_reader(parent_conn.fileno(), readable)
        wake: asyncio.Future[Any] = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait([closed, wake], return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
            if not closed.done():
                loop.remove_reader(parent_conn.fileno())
                self._send(("stop",))
            await asyncio.to_thread(_end_process, process)
            self._conn = None
            parent_conn.close()
            self.online = False
            for said in self._said.values():  # the process that would answer is gone
                if not said.done():
                    said.set_result("the wechaty process exited")
        return process.exitcode

    def _child_settings(self) -> ChildSettings:
        return ChildSettings(
            token=self.settings.token.get_secret_value(),
            endpoint=self.settings.endpoint,
            reconnect_max_seconds=self.settings.reconnect_max_seconds,
            cache_dir=str(self.config.storage.data_dir / "wechaty"),
            max_image_bytes=self.config.images.max_file_mb * 1024 * 1024,
            log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            puppet_factory=self.puppet_factory,
        )

    def _send(self, item: tuple[Any, ...]) -> None:
        # Only ever called on the bridge loop, so sends never interleave.
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send(item)

    def _dispatch(self, item: tuple[Any, ...]) -> None:
        if item[0] == "state":
            self._on_state(item[1])
        elif item[0] == "message":
            task = asyncio.ensure_future(self._answer(item[1], item[2]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif item[0] == "said":
            said = self._said.get(item[1])
            if said is not None and not said.done():
                said.set_result(item[2])

    def _on_state(self, state: dict[str, Any]) -> None:
        reason = state.get("reason", "")
        self._last_reason = reason or None
        if state["state"] == "online":
            self.online = True
            if self._unavailable:
                self._unavailable = False
                log.info("%s", msg("bot_recovered", platform="WeChat"))
            else:
                log.info("WeChat gateway connected")
        elif state["state"] == "unavailable":
            self.online = False
            self.failed_attempts += 1
            self.retry_delays.append(float(state.get("retry_in", 0.0)))
            if not self._unavailable:
                self._unavailable = True
                log.warning("%s", msg("bot_unavailable", platform="WeChat", reason=reason))
            else:
                log.debug(
                    "WeChat still unavailable (%s); retrying in %.1f s", reason, state.get("retry_in", 0)
                )
        elif state["state"] == "fatal":
            self._fatal, self._fatal_reason = True, reason
            log.error("%s", reason)

    # -- messages --------------------------------------------------------------------------------------

    async def _answer(self, request_id: int, fields: dict[str, Any]) -> None:
        texts: list[str] = []
        try:
            message = self._with_group_photos(IncomingMessage(platform="wechat", **fields))
            if message is not None:
                message = dataclasses.replace(message, lang=guess_lang(message.text))
                texts = await self.core.handle(message)
        except Exception:
            log.exception("WeChat message %s could not be answered", fields.get("message_id", "?"))
        self._send(("reply", request_id, texts))

    def _with_group_photos(self, message: IncomingMessage) -> IncomingMessage | None:
        """Keep an unaddressed group photo for later (None: nothing to ask now); attach it on a mention."""
        if not message.is_group:
            return message
        now = time.monotonic()
        keep = self.settings.conversation_minutes * 60
        for stale in [k for k, p in self._photos.items() if now - p.at > keep]:
            del self._photos[stale]
        key = (message.chat_id, message.user_id)
        if message.images and not message.addressed:
            photos = self._photos.setdefault(key, _GroupPhotos())
            photos.images = (photos.images + list(message.images))[-MAX_GROUP_PHOTOS:]
            photos.at = now
            return None
        if message.addressed and not message.images and key in self._photos:
            images = tuple(self._photos.pop(key).images)
            return dataclasses.replace(message, images=images)
        return message


def _end_process(process: Any) -> None:
    """Give the child a moment to stop cleanly, then terminate, then kill."""
    process.join(CHILD_STOP_SECONDS)
    if process.is_alive():
        process.terminate()
        process.join(1.0)
    if process.is_alive():
        process.kill()
        process.join(1.0)
