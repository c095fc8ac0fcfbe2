"""The wechaty half of the WeChat adapter: runs in its own process, started by `bots.wechat.WeChatBot`.

This module is the only place that imports python-wechaty (through `bots.wechaty_compat`). It connects to
the puppet-service gateway, turns each WeChat message into plain fields for the service process, and says
the replies it gets back. It keeps no conversation state: that lives with `ChatCore` in the service.

We drive `Wechaty` ourselves (`init_puppet`, `init_puppet_event_bridge`, `puppet.start`) instead of calling
`Wechaty.start()`, because `start()` swallows errors, sleeps a fixed 60 s on network errors and calls
`loop.stop()` on a puppet error. Here each connection attempt either runs until the gateway drops it or
fails with a reason; we report it and retry with exponential backoff up to `reconnect_max_seconds`.

See `bots.wechat` for the pipe protocol.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import itertools
import logging
import os
import socket
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from service.logs import RedactSecrets, setup_logging
from service.messages import msg
from service.retry import Backoff

log = logging.getLogger(f"tuwen.{__name__}")

INITIAL_RETRY_SECONDS = 1.0
# Inside the parent's wait (bots.wechat.CHILD_STOP_SECONDS), so a clean stop is not cut short.
STOP_SECONDS = 1.5
URL_FETCH_SECONDS = 30.0


@dataclass(frozen=True)
class ChildSettings:
    """Everything the child needs, picklable (the child is a fresh interpreter)."""

    token: str
    endpoint: str
    reconnect_max_seconds: float
    cache_dir: str
    max_image_bytes: int
    log_level: str = "INFO"
    # Tests only: "module:callable" building a Puppet from (PuppetOptions, cache_dir) instead of the
    # gateway's puppet-service.
    puppet_factory: str | None = None


class Fatal(Exception):
    """Retrying cannot help (missing library, rejected token): report once and stop."""


class TooLarge(Exception):
    """An image larger than `[images] max_file_mb`."""

    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes")
        self.size = size


def run_child(conn: Connection, settings: ChildSettings) -> None:
    """Process entry point: run until the parent says stop or goes away."""
    # puppet-service also takes its token from the environment: redact that one too.
    secrets = [settings.token, os.environ.get("WECHATY_PUPPET_SERVICE_TOKEN", "")]
    setup_logging(settings.log_level, secrets=secrets)
    # wechaty reads these at import: keep its cache (and its job database) under our data dir, and its
    # own chatty loggers at warnings unless the operator asked for more.
    os.environ["CACHE_DIR"] = settings.cache_dir
    os.environ.setdefault("WECHATY_LOG", "warn")
    Path(settings.cache_dir).mkdir(parents=True, exist_ok=True)
    gateway = Gateway(conn, settings)
    try:
        asyncio.run(gateway.main())
    finally:
        conn.close()


class Gateway:
    """One wechaty connection at a time, its messages bridged to the parent over `conn`."""

    def __init__(self, conn: Connection, settings: ChildSettings) -> None:
        self.conn = conn
        self.settings = settings
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[list[str]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._bot: Any = None  # the Wechaty of the connection in hand, for unprompted messages ("say")
        self._tasks: set[asyncio.Future[None]] = set()

    def send(self, item: tuple[Any, ...]) -> None:
        """Send one protocol tuple to the parent (a gone parent is handled by the reader)."""
        with self._send_lock, contextlib.suppress(OSError):
            self.conn.send(item)

    def _state(self, state: str, reason: str = "", retry_in: float = 0.0) -> None:
        self.send(("state", {"state": state, "reason": reason, "retry_in": retry_in}))

    async def main(self) -> None:
        """Load wechaty, then keep a connection up until told to stop."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        threading.Thread(target=self._read, name="wechat-pipe", daemon=True).start()
        runner = asyncio.create_task(self._connect_forever())
        stop_wait = asyncio.create_task(self._stop.wait())
        await asyncio.wait({runner, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        for task in (runner, stop_wait):
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(runner, STOP_SECONDS)

    def _read(self) -> None:
        # A blocking reader thread: the pipe is not an asyncio stream, and wechaty may block the loop
        # (its endpoint probe is a blocking telnet) while a reply is arriving.
        assert self._loop is not None and self._stop is not None
        while True:
            try:
                item = self.conn.recv()
            except (EOFError, OSError):
                item = ("stop",)
            if item[0] == "reply":
                self._loop.call_soon_threadsafe(self._deliver, item[1], item[2])
            elif item[0] == "say":
                self._loop.call_soon_threadsafe(self._start_say, item[1], item[2], item[3])
            elif item[0] == "stop":
                self._loop.call_soon_threadsafe(self._stop.set)
                return

    def _start_say(self, request_id: int, conversation_id: str, text: str) -> None:
        task = asyncio.ensure_future(self._say(request_id, conversation_id, text))
        self._tasks.add(task)  # keep a reference until it ends, or the task may vanish mid-send
        task.add_done_callback(self._tasks.discard)

    async def _say(self, request_id: int, conversation_id: str, text: str) -> None:
        """Send `text` to a contact or room id; answer ("said", id, error), error '' when sent."""
        bot = self._bot
        error = ""
        try:
            if bot is None:
                raise RuntimeError("not connected to the WeChat gateway")
            # Straight to the puppet: `Contact.say` would then load the sent message back, and a failure
            # there would look like a failed send and be retried, sending the report twice.
            await bot.puppet.message_send_text(conversation_id, text)
        except Exception as exc:
            error = _describe(exc)
        self.send(("said", request_id, error))

    def _deliver(self, request_id: int, texts: list[str]) -> None:
        future = self._waiting.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(texts)

    async def ask(self, fields: dict[str, Any]) -> list[str]:
        """Hand one message to the service; its reply texts."""
        request_id = next(self._ids)
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self.send(("message", request_id, fields))
        return await future

    async def _connect_forever(self) -> None:
        try:
            from bots.wechaty_compat import load_wechaty

            load_wechaty()
            importlib.import_module("wechaty_puppet_service")  # wechaty imports it late; its logger now
            _redact_wechaty_loggers([self.settings.token, os.environ.get("WECHATY_PUPPET_SERVICE_TOKEN", "")])
            # Warnings at every attempt or login that say nothing to an operator: "endpoint and token both
            # set, using the endpoint" (always true for us), "no web service" (we use no wechaty plugins).
            for chatty in ("PuppetService", "wechaty.plugin"):
                logging.getLogger(chatty).setLevel(logging.ERROR)
        except ImportError as exc:
            self._state("fatal", str(msg("wechat_not_installed", reason=exc)))
            return
        # No jitter: one gateway, one child; the delays are told to the parent as they are.
        backoff = Backoff(base=INITIAL_RETRY_SECONDS, cap=self.settings.reconnect_max_seconds, jitter=0)
        while True:
            online = asyncio.Event()
            try:
                reason = await self._session(online)
            except Fatal as exc:
                self._state("fatal", str(exc))
                return
            if online.is_set():
                backoff.reset()  # it worked for a while: a fresh drop gets a quick retry
            delay = backoff.next_delay()
            self._state("unavailable", reason, delay)
            log.debug("WeChat gateway: %s; retrying in %.1f s", reason, delay)
            await asyncio.sleep(delay)

    async def _session(self, online: asyncio.Event) -> str:
        """One connection, from connect to drop; returns why it ended."""
        from apscheduler.schedulers.asyncio import AsyncIOScheduler
        from wechaty import Wechaty, WechatyOptions
        from wechaty_puppet import PuppetOptions

        def mark_online(*_: object) -> None:
            if not online.is_set():
                online.set()
                self._state("online")

        # A fresh PuppetOptions every time: the dataclass default is one shared instance (wechaty_compat).
        options = PuppetOptions(token=self.settings.token or None, end_point=self.settings.endpoint or None)
        # In memory: wechaty's default scheduler keeps an SQLite job store for plugins we do not use.
        scheduler = AsyncIOScheduler()
        try:
            bot = Wechaty(
                WechatyOptions(
                    name="tuwen",
                    puppet=self._puppet(options),
                    puppet_options=options,
                    # Its plugin web server stays off (no plugins), but login still probes this port.
                    host="127.0.0.1",
                    port=_free_port(),
                    scheduler=scheduler,
                )
            )
        except Exception as exc:  # puppet-service refuses to start without an endpoint or a token
            raise Fatal(str(msg("wechat_not_configured", reason=exc))) from exc
        # Any event means the gateway answers; "scan" too (it is up, WeChat itself waits for a login).
        for event in ("login", "ready", "heartbeat", "dong", "scan"):
            bot.on(event, mark_online)
        bot.on("scan", self._on_scan)
        bot.on("message", self._on_message)
        self._bot = bot
        try:
            await bot.init_puppet()
            await bot.init_puppet_event_bridge(bot.puppet)
            await bot.puppet.start()
            return "the gateway closed the event stream"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _is_auth_error(exc):
                reason = f"{exc.status.name}: {exc.message}"  # type: ignore[attr-defined]
                raise Fatal(str(msg("bot_auth_failed", platform="WeChat", reason=reason))) from exc
            return _describe(exc)
        finally:
            self._bot = None
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(bot.puppet.stop(), STOP_SECONDS)
            if scheduler.running:
                scheduler.shutdown(wait=False)

    def _puppet(self, options: Any) -> Any:
        if not self.settings.puppet_factory:
            return "wechaty-puppet-service"
        module, _, attr = self.settings.puppet_factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
        return factory(options, Path(self.settings.cache_dir))

    def _on_scan(self, qr_code: str, status: object, data: object = None) -> None:
        log.warning("WeChat login needed (%s): scan https://wechaty.js.org/qrcode/%s", status, qr_code)

    async def _on_message(self, message: Any) -> None:
        # pyee runs each handler as its own task: one slow answer never holds up other chats.
        try:
            await self._forward(message)
        except Exception:
            log.exception("WeChat message %s could not be handled", getattr(message, "message_id", "?"))

    async def _forward(self, message: Any) -> None:
        from wechaty import MessageType

        if message.is_self():
            return
        kind = message.type()
        room = message.room()
        talker = message.talker()
        fields: dict[str, Any] = {
            "chat_id": room.room_id if room is not None else talker.contact_id,
            "user_id": talker.contact_id,
            "text": "",
            "images": (),
            "is_group": room is not None,
            "addressed": room is None,
            "message_id": message.message_id,
        }
        if kind in (MessageType.MESSAGE_TYPE_IMAGE, MessageType.MESSAGE_TYPE_ATTACHMENT):
            try:
                fields["images"] = (await self._download(message),)
            except TooLarge as exc:
                limit_mb = self.settings.max_image_bytes // (1024 * 1024)
                size_mb = f"{exc.size / (1024 * 1024):.1f}"
                await self._say_error(message, msg("bot_file_too_large", size_mb=size_mb, limit_mb=limit_mb))
                return
            except Exception as exc:
                log.warning("WeChat image %s could not be fetched: %s", message.message_id, exc)
                await self._say_error(message, msg("bot_download_failed"))
                return
        elif kind == MessageType.MESSAGE_TYPE_TEXT:
            fields["text"] = message.text()
            if room is not None and await message.mention_self():
                fields["addressed"] = True
                fields["text"] = await message.mention_text()  # without the "@bot" itself
        else:
            return  # voice, video, stickers, links: nothing for a vision model to answer
        texts = await self.ask(fields)
        for number, text in enumerate(texts):
            if room is not None:
                # Mention the asker once, so a busy group sees whom the answer is for.
                await room.say(text, mention_ids=[talker.contact_id] if number == 0 else None)
            else:
                await message.say(text)

    async def _say_error(self, message: Any, error: Any) -> None:
        # Only in a private chat: in a group the photo was not addressed to us (see bots.wechat).
        if message.room() is None:
            await message.say(error.zh)

    async def _download(self, message: Any) -> bytes:
        box = await message.to_file_box()
        return await file_box_bytes(box, self.settings.max_image_bytes)


async def file_box_bytes(box: Any, max_bytes: int) -> bytes:
    """The content of a wechaty FileBox (its own `to_base64` is a stub returning '')."""
    from wechaty_puppet.file_box.type import FileBoxType

    kind = box.type()
    if kind == FileBoxType.Url:
        return await _fetch(box.remoteUrl, getattr(box, "headers", None) or {}, max_bytes)
    if kind == FileBoxType.File:
        path = Path(box.localPath)
        _check_size(path.stat().st_size, max_bytes)
        return path.read_bytes()
    if kind == FileBoxType.Base64:
        encoded = box.base64.split(b",", 1)[-1] if box.base64.startswith(b"data:") else box.base64
        _check_size(len(encoded) * 3 // 4, max_bytes)
        return base64.b64decode(encoded)
    if kind in (FileBoxType.Buffer, FileBoxType.Stream):
        data = bytes(box.buffer if kind == FileBoxType.Buffer else box.stream)
        _check_size(len(data), max_bytes)
        return data
    raise ValueError(f"unsupported FileBox type {kind}")


async def _fetch(url: str, headers: dict[str, str], max_bytes: int) -> bytes:
    # The gateway's own media URL: trusted like the gateway, but still bounded in time and size.
    import httpx

    async with (
        httpx.AsyncClient(timeout=URL_FETCH_SECONDS, follow_redirects=True) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        response.raise_for_status()
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            _check_size(size, max_bytes)
            chunks.append(chunk)
        return b"".join(chunks)


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise TooLarge(size)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _describe(exc: BaseException) -> str:
    # wechaty's exceptions carry (message, code, params): show the message, not the tuple.
    first = exc.args[0] if exc.args else ""
    return f"{type(exc).__name__}: {first if isinstance(first, str) and first else exc}"


def _is_auth_error(exc: BaseException) -> bool:
    try:
        from grpclib.const import Status
        from grpclib.exceptions import GRPCError
    except ImportError:
        return False
    return isinstance(exc, GRPCError) and exc.status in (Status.UNAUTHENTICATED, Status.PERMISSION_DENIED)


def _redact_wechaty_loggers(secrets: list[str]) -> None:
    # wechaty's loggers have their own handlers and do not propagate, and puppet-service logs the token
    # in a warning when both token and endpoint are set: give their handlers our redaction too.
    redact = RedactSecrets(secrets)
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and not logger.propagate:
            for handler in logger.handlers:
                handler.addFilter(redact)
