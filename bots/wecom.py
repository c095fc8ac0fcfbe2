"""WeCom (企业微信) self-built app: the callback URL on tuwen's HTTP server, replies via message/send.

WeCom POSTs each user message, encrypted, to the callback URL and retries (three times) unless it gets an
answer within 5 s, so the callback only verifies, decrypts, de-duplicates by MsgId and answers an empty 200
at once; the work (fetch the photo by MediaId, ask `ChatCore`, send the answer) runs afterwards as an
asyncio task on the HTTP server's event loop. Tasks are tracked so `stop()` can cancel them. The server
API (token, media, send; retries and error kinds) lives in `bots/wecom_api.py`, the crypto in
`bots/wecom_crypto.py`. Photos are fetched by MediaId, not PicUrl: media/get is authenticated, typed and
answers errors as JSON, where PicUrl is a bare CDN link.

One user's messages are handled in arrival order (a per-user lock taken before the first await): a photo
and the question typed right after it arrive as two callbacks, and the question must find the photo's
conversation already there.

Failures, the three kinds: network trouble, HTTP 5xx and WeCom's "busy" codes are retried with backoff, and
"unavailable"/"recovered" are logged once each; rejected credentials (wrong secret or corp id, untrusted IP)
are logged once, clearly, and sending pauses (`AUTH_RETRY_SECONDS`) while the callback keeps answering, so
WeCom does not pile up retries; invalid [wecom] settings make `start()` fail with a message and the callback
answer 503. The secret, the access token and the AES key are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from bots.core import ChatCore, IncomingMessage, split_message
from bots.wecom_api import (
    TEXT_LIMIT_BYTES,
    MediaRefused,
    WeComApi,
    WeComApiError,
    WeComAuthError,
    WeComTransientError,
    utf8_length,
)
from bots.wecom_crypto import ReceiverIdError, SignatureError, WeComCrypto, WeComCryptoError, parse_flat_xml
from service.config import Config
from service.messages import msg
from service.queue import JobQueue
from service.sources import NotifyError
from service.supervisor import ComponentStatus

log = logging.getLogger(f"tuwen.{__name__}")

PLATFORM = "wecom"
PLATFORM_NAME = "企业微信 WeCom"
MAX_CALLBACK_BYTES = 256 * 1024  # a callback is a few hundred bytes; refuse anything absurd unread
DEDUP_SIZE = 4096
AUTH_RETRY_SECONDS = 600.0  # an admin can fix a trusted-IP list without restarting us
STOP_TIMEOUT_SECONDS = 5.0
REFUSAL_LOG_SECONDS = 60.0
MEDIA_LIMITS_MB = {"image": 10, "file": 20}  # media/upload's limits per type


class WeComBot:
    """The WeCom source: an `http_router` for the callback URL plus background answering."""

    name = "wecom"
    platform = PLATFORM  # a `service.sources.Notifier`: scheduled reports are sent through `notify`
    attachments = frozenset({"image", "document"})

    def __init__(self, config: Config, queue: JobQueue) -> None:
        self.config = config
        self.wecom = config.wecom
        self.api = WeComApi(config)
        # Reports are sent from the scheduler's threads, each on a short-lived loop of its own: a separate
        # client whose token lock (an asyncio.Lock) is never shared with the HTTP server's loop, and
        # `_notify_lock` so two loops never use it at once.
        self._notify_api = WeComApi(config)
        self._notify_lock = threading.Lock()
        self.core = ChatCore(
            PLATFORM, config.wecom, queue, config, max_message_chars=TEXT_LIMIT_BYTES, length=utf8_length
        )
        self.crypto: WeComCrypto | None = None
        self.config_problem = ""
        try:
            self.crypto = WeComCrypto(
                self.wecom.token.get_secret_value(),
                self.wecom.encoding_aes_key.get_secret_value(),
                self.wecom.corp_id,
            )
        except ValueError as exc:  # reported by start(); App must still be buildable
            self.config_problem = str(exc)
        if not self.config_problem and not (self.wecom.secret.get_secret_value() and self.wecom.agent_id):
            self.config_problem = "secret or agent_id is empty"
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._user_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._paused_until = 0.0  # sending paused after rejected credentials
        self._unavailable = False
        self._problem: str | None = None
        self._last_refusal_logged = -REFUSAL_LOG_SECONDS
        self.http_router = self._build_router()

    # -- Source ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start answering callbacks; raises (logged by the App) when [wecom] is incomplete."""
        if self.config_problem:
            raise RuntimeError(str(msg("wecom_not_configured", reason=self.config_problem)))
        self._running = True
        log.info("WeCom callback ready at %s (agent %d)", self.wecom.callback_path, self.wecom.agent_id)

    def status(self) -> ComponentStatus:
        """The bot's state for `/health` and `/metrics`: it runs inside the HTTP server, so no restarts."""
        if self.config_problem:
            reason = str(msg("wecom_not_configured", reason=self.config_problem))
            return ComponentStatus(self.name, PLATFORM, "disabled", error=reason)
        if self._paused_until:
            return ComponentStatus(self.name, PLATFORM, "disabled", error=self._problem)
        if self._unavailable:
            return ComponentStatus(self.name, PLATFORM, "unavailable", error=self._problem)
        return ComponentStatus(self.name, PLATFORM, "running" if self._running else "stopped")

    def stop(self) -> None:
        """Refuse new callbacks (503, so WeCom retries later) and cancel work in hand within seconds."""
        self._running = False
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running() or not self._tasks:
            return
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is loop:  # called on the loop itself: cannot wait here
                for task in self._tasks:
                    task.cancel()
                return
        future = asyncio.run_coroutine_threadsafe(self._cancel_tasks(), loop)
        try:
            future.result(timeout=STOP_TIMEOUT_SECONDS)
        except Exception:
            log.warning("WeCom tasks did not stop within %.0f s", STOP_TIMEOUT_SECONDS)

    def notify(
        self, recipient: str, text: str, *, image: Path | None = None, document: Path | None = None
    ) -> None:
        """Send a report to WeCom user `recipient`: text, image, document (a file); raises `NotifyError`."""
        if self.config_problem:
            raise NotifyError(str(msg("wecom_not_configured", reason=self.config_problem)), permanent=True)
        with self._notify_lock:
            try:
                invalid = asyncio.run(self._notify(recipient, text, image, document))
            except (WeComApiError, MediaRefused) as exc:  # WeComAuthError too: an admin must act first
                raise NotifyError(self._notify_api.redact(str(exc)), permanent=True) from None
            except (WeComTransientError, httpx.HTTPError, OSError) as exc:
                raise NotifyError(self._notify_api.redact(f"{type(exc).__name__}: {exc}")) from None
        if invalid:
            raise NotifyError(f"WeCom refused the recipient {invalid!r} (invaliduser)", permanent=True)

    async def _notify(self, user: str, text: str, image: Path | None, document: Path | None) -> str:
        api = self._notify_api
        async with httpx.AsyncClient(timeout=60.0, trust_env=False) as client:
            for part in split_message(text, TEXT_LIMIT_BYTES, utf8_length) if text else []:
                if invalid := await api.send_text(client, user, part):
                    return invalid
            for kind, path in (("image", image), ("file", document)):
                if path is None:
                    continue
                if path.stat().st_size > MEDIA_LIMITS_MB[kind] * 1024 * 1024:
                    raise NotifyError(
                        f"{path.name} is over WeCom's {MEDIA_LIMITS_MB[kind]} MB", permanent=True
                    )
                media_id = await api.upload_media(client, kind, path)
                if invalid := await api.send(client, user, kind, {"media_id": media_id}):
                    return invalid
        return ""

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=STOP_TIMEOUT_SECONDS - 1)

    # -- the callback URL ------------------------------------------------------------------------

    def _build_router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route(self.wecom.callback_path, self._verify_url, methods=["GET"])
        router.add_api_route(self.wecom.callback_path, self._callback, methods=["POST"])
        return router

    def _refusal(self, exc: WeComCryptoError) -> Response:
        status = 403 if isinstance(exc, SignatureError | ReceiverIdError) else 400
        # A public URL draws scanners: warn at most once a minute, so a real misconfiguration still shows.
        now = time.monotonic()
        level = logging.WARNING if now - self._last_refusal_logged >= REFUSAL_LOG_SECONDS else logging.DEBUG
        if level == logging.WARNING:
            self._last_refusal_logged = now
        log.log(level, "%s", msg("wecom_callback_refused", reason=exc))
        return PlainTextResponse(str(msg("wecom_callback_refused", reason=exc)), status_code=status)

    def _crypto_or_refusal(self) -> WeComCrypto | Response:
        if self.crypto is None or self.config_problem:
            return PlainTextResponse(str(msg("wecom_not_configured", reason=self.config_problem)), 503)
        return self.crypto

    async def _verify_url(self, request: Request) -> Response:
        """GET: WeCom checks the URL when an admin saves it; answer echostr's plaintext."""
        crypto = self._crypto_or_refusal()
        if isinstance(crypto, Response):
            return crypto
        query = request.query_params
        # Base64 has no spaces; a '+' sent without URL-encoding arrives as one.
        echostr = query.get("echostr", "").replace(" ", "+")
        try:
            plain = crypto.verify_url(
                query.get("msg_signature", ""), query.get("timestamp", ""), query.get("nonce", ""), echostr
            )
        except WeComCryptoError as exc:
            return self._refusal(exc)
        log.info("WeCom verified the callback URL")
        return PlainTextResponse(plain)

    async def _callback(self, request: Request) -> Response:
        """POST: verify, decrypt, de-duplicate, answer 200 at once; the work runs as a task."""
        crypto = self._crypto_or_refusal()
        if isinstance(crypto, Response):
            return crypto
        body = bytearray()
        async for chunk in request.stream():  # read with a cap: the URL is public
            body += chunk
            if len(body) > MAX_CALLBACK_BYTES:
                return Response(status_code=413)
        query = request.query_params
        try:
            inner = crypto.decrypt_callback(
                query.get("msg_signature", ""),
                query.get("timestamp", ""),
                query.get("nonce", ""),
                bytes(body),
            )
            fields = parse_flat_xml(inner)
        except WeComCryptoError as exc:
            return self._refusal(exc)
        if not self._running:
            return Response(status_code=503)  # stopping: WeCom retries, perhaps to our successor
        msg_type, msg_id = fields.get("MsgType", ""), fields.get("MsgId", "")
        user = fields.get("FromUserName", "")
        if msg_type == "event" or not msg_id or not user:
            return Response(status_code=200)  # entering the app, menu clicks...: nothing to answer
        if msg_id in self._seen:
            log.info("WeCom message %s arrived again (a retry); already handled", msg_id)
            return Response(status_code=200)
        self._seen[msg_id] = None
        while len(self._seen) > DEDUP_SIZE:
            self._seen.popitem(last=False)
        if time.monotonic() < self._paused_until:
            log.debug("WeCom message %s dropped: sending is paused after rejected credentials", msg_id)
            return Response(status_code=200)
        self._loop = asyncio.get_running_loop()
        task = self._loop.create_task(self._process(fields), name=f"wecom-{msg_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return Response(status_code=200)

    # -- answering -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _in_order(self, user: str) -> AsyncIterator[None]:
        lock, users = self._user_locks.get(user, (asyncio.Lock(), 0))
        self._user_locks[user] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._user_locks[user]
            if users <= 1:
                del self._user_locks[user]
            else:
                self._user_locks[user] = (lock, users - 1)

    async def _process(self, fields: dict[str, str]) -> None:
        """Answer one message: fetch its photo, ask the core, send the replies."""
        user, msg_id = fields["FromUserName"], fields["MsgId"]
        async with self._in_order(user):
            try:
                async with httpx.AsyncClient(timeout=30.0, trust_env=False) as client:
                    replies = await self._replies(client, fields)
                    for text in replies:
                        for part in split_message(text, TEXT_LIMIT_BYTES, utf8_length):
                            await self.api.send_text(client, user, part)
                self._mark_available()
                log.info("WeCom message %s from %s answered in %d message(s)", msg_id, user, len(replies))
            except WeComAuthError as exc:
                self._pause(exc)
            except WeComTransientError as exc:
                self._mark_unavailable(str(exc))
            except WeComApiError as exc:
                log.warning("WeCom message %s: the API refused (%s)", msg_id, self.api.redact(str(exc)))
            except asyncio.CancelledError:
                log.info("WeCom message %s: stopped before it was answered", msg_id)
                raise
            except Exception:  # a task's error would otherwise vanish unlogged
                log.exception("WeCom message %s could not be answered", msg_id)

    async def _replies(self, client: httpx.AsyncClient, fields: dict[str, str]) -> list[str]:
        user = fields["FromUserName"]
        base = IncomingMessage(platform=PLATFORM, chat_id=user, user_id=user, message_id=fields["MsgId"])
        msg_type = fields.get("MsgType", "")
        if msg_type == "text":
            return await self.core.handle(replace(base, text=fields.get("Content", "")))
        if msg_type != "image":
            return await self.core.handle(replace(base, text="/help"))  # voice, video, location, link
        if not self._allowed(user):
            return await self.core.handle(base)  # the core refuses; the photo is not worth fetching
        try:
            data = await self.api.download_media(client, fields.get("MediaId", ""))
        except MediaRefused as exc:
            return [exc.reply.zh]
        except WeComAuthError:
            raise
        except (WeComApiError, WeComTransientError) as exc:
            log.warning("WeCom photo %s could not be fetched: %s", base.message_id, self.api.redact(str(exc)))
            return [msg("bot_download_failed").zh]
        return await self.core.handle(replace(base, images=(data,)))

    def _allowed(self, user: str) -> bool:
        users, chats = self.wecom.allowed_user_ids, self.wecom.allowed_chat_ids
        return (not users or user in users) and (not chats or user in chats)

    def _pause(self, exc: WeComAuthError) -> None:
        first = self._paused_until == 0.0
        self._paused_until = time.monotonic() + AUTH_RETRY_SECONDS
        reason = self.api.redact(str(exc))
        self._problem = str(msg("bot_auth_failed", platform=PLATFORM_NAME, reason=reason))
        if first:
            log.error("%s", self._problem)
        else:
            log.warning("WeCom credentials still rejected (%s); trying again later", reason)

    def _mark_unavailable(self, reason: str) -> None:
        if not self._unavailable:
            self._unavailable = True
            self._problem = str(msg("bot_unavailable", platform=PLATFORM_NAME, reason=reason))
            log.warning("%s", self._problem)

    def _mark_available(self) -> None:
        if self._unavailable or self._paused_until:
            self._unavailable, self._paused_until = False, 0.0
            log.info("%s", msg("bot_recovered", platform=PLATFORM_NAME))
