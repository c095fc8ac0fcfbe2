"""The WeCom server API as tuwen uses it: access token, media download and upload, text/image/file send.

The access token is cached until `TOKEN_MARGIN_SECONDS` before its `expires_in` and renewed at once (one
retry per call) when WeCom says it is invalid or expired; only one refresh runs at a time, because a fresh
token can invalidate the one other requests are holding. Errors come in the three kinds the service knows:
`WeComTransientError` (network, HTTP 5xx, errcode -1 and rate limits; retried here with backoff),
`WeComAuthError` (wrong secret or corp id, untrusted IP: nothing works until an admin acts) and
`WeComApiError` (this one request was refused). Response bodies are read with a size cap.

Log lines never carry the secret or the token: they travel in query strings, so exception texts that may
contain a URL go through `WeComApi.redact` first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from service import redact
from service.config import Config
from service.messages import Message, msg
from service.retry import Backoff

log = logging.getLogger(f"tuwen.{__name__}")

T = TypeVar("T")
TEXT_LIMIT_BYTES = 2048  # message/send truncates text content beyond 2048 bytes
MAX_MEDIA_MB = 20  # media/get serves files up to 20 MB
TOKEN_MARGIN_SECONDS = 300  # refresh this long before expires_in, so a token never dies mid-request
TOKEN_ERRCODES = {40014, 41001, 42001}  # invalid, missing, expired access_token: fetch a new one once
AUTH_ERRCODES = {40001, 40013, 40056, 40091, 48002, 60020, 301002}  # secret, corp id, agent, trusted IP
TRANSIENT_ERRCODES = {-1, 45009, 45033}  # system busy, frequency and concurrency limits


def utf8_length(text: str) -> int:
    """Length in UTF-8 bytes, the way WeCom counts its 2048-byte text limit."""
    return len(text.encode("utf-8"))


class WeComApiError(Exception):
    """WeCom answered with an error for this one request (retrying will not help)."""

    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"errcode {errcode}: {errmsg}")
        self.errcode = errcode


class WeComAuthError(WeComApiError):
    """Our credentials were rejected: nothing will work until an admin fixes them."""


class WeComTransientError(Exception):
    """Network trouble, HTTP 5xx or "system busy": worth retrying later."""


class MediaRefused(Exception):
    """The downloaded media is no image we accept; `reply` says why, for the user."""

    def __init__(self, reply: Message) -> None:
        super().__init__(reply.en)
        self.reply = reply


class WeComApi:
    """The three API calls tuwen needs, with a cached access token, retries and error classes."""

    def __init__(self, config: Config) -> None:
        self._wecom = config.wecom
        self.base = config.wecom.api_base.rstrip("/")
        self.max_media_bytes = int(min(config.images.max_file_mb, MAX_MEDIA_MB) * 1024 * 1024)
        self.attempts = 4
        self.backoff_seconds = 0.5
        self._token = ""
        self._token_expires = 0.0
        redact.register([config.wecom.secret.get_secret_value()])
        self._token_lock = asyncio.Lock()  # one refresh at a time: a new token invalidates the old one

    def redact(self, text: str) -> str:
        """`text` without the secret or the access token (the process-wide redactor knows both)."""
        return redact.scrub(text)

    async def token(self, client: httpx.AsyncClient, *, refresh: bool = False) -> str:
        """The cached access token, fetched again when close to expiry or when `refresh` is asked."""
        stale = self._token
        async with self._token_lock:
            if (
                self._token
                and time.monotonic() < self._token_expires
                and not (refresh and self._token == stale)
            ):
                return self._token
            params = {"corpid": self._wecom.corp_id, "corpsecret": self._wecom.secret.get_secret_value()}
            payload = _json(*await self._fetch(client, "GET", "/cgi-bin/gettoken", params, None, 64 * 1024))
            _raise_for_errcode(payload, token_call=True)
            self._token = str(payload.get("access_token", ""))
            redact.register([self._token])  # a URL with it in an error text must not reach a log
            lifetime = float(payload.get("expires_in", 7200))
            self._token_expires = time.monotonic() + max(lifetime - TOKEN_MARGIN_SECONDS, lifetime / 2)
            return self._token

    async def download_media(self, client: httpx.AsyncClient, media_id: str) -> bytes:
        """The bytes of an image message's MediaId (size and type checked)."""
        response, body = await self._retrying(
            lambda: self._authorized(client, "GET", "/cgi-bin/media/get", {"media_id": media_id}, None)
        )
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type.startswith("image/") or content_type == "application/octet-stream":
            return body
        raise MediaRefused(msg("bot_not_image"))

    async def upload_media(self, client: httpx.AsyncClient, kind: str, path: Path) -> str:
        """Upload `path` as temporary media of `kind` ("image" or "file"; WeCom keeps it 3 days); its id."""
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        files = {"media": (path.name, path.read_bytes(), content_type)}
        response, body = await self._retrying(
            lambda: self._authorized(
                client, "POST", "/cgi-bin/media/upload", {"type": kind}, None, files=files
            )
        )
        media_id = str(_json(response, body).get("media_id", ""))
        if not media_id:
            raise WeComApiError(0, "media/upload answered without a media_id")
        return media_id

    async def send_text(self, client: httpx.AsyncClient, user: str, content: str) -> str:
        """Send one text message (at most 2048 bytes) to `user` from this app; `invaliduser` as `send`."""
        return await self.send(client, user, "text", {"content": content})

    async def send(self, client: httpx.AsyncClient, user: str, msgtype: str, content: dict[str, str]) -> str:
        """Send one message of `msgtype` ("text", or "image"/"file" with a `media_id`) to `user`.

        Returns WeCom's `invaliduser` ('' when it was delivered).
        """
        message = {"touser": user, "msgtype": msgtype, "agentid": self._wecom.agent_id, msgtype: content}
        response, body = await self._retrying(
            lambda: self._authorized(client, "POST", "/cgi-bin/message/send", {}, message)
        )
        invalid = str(_json(response, body).get("invaliduser") or "")
        if invalid:
            log.warning("WeCom did not deliver to %s (invaliduser)", invalid)
        return invalid

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        backoff = Backoff(base=self.backoff_seconds, cap=30.0)
        for attempt in range(1, self.attempts + 1):
            try:
                return await call()
            except (WeComTransientError, httpx.TransportError) as exc:
                if attempt == self.attempts:
                    raise WeComTransientError(self.redact(f"{type(exc).__name__}: {exc}")) from exc
                delay = backoff.next_delay()
                log.debug("WeCom call failed (%s), retry %d in %.1f s", type(exc).__name__, attempt, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _authorized(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        params: dict[str, str],
        body: object,
        *,
        files: dict[str, Any] | None = None,
    ) -> tuple[httpx.Response, bytes]:
        """One call with the access token; a token WeCom calls invalid or expired is renewed once."""
        for renew in (False, True):
            token = await self.token(client, refresh=renew)
            limit = self.max_media_bytes if path.endswith("/media/get") else 1024 * 1024
            response, data = await self._fetch(
                client, method, path, {**params, "access_token": token}, body, limit, files=files
            )
            payload = _json(response, data) if _looks_like_json(response, data) else None
            if payload is None:
                return response, data
            if int(payload.get("errcode", 0)) in TOKEN_ERRCODES and not renew:
                log.info("WeCom access token expired or invalid; fetching a new one")
                continue
            _raise_for_errcode(payload, token_call=False)
            return response, data
        raise AssertionError("unreachable")

    async def _fetch(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        params: dict[str, str],
        body: object,
        limit: int,
        *,
        files: dict[str, Any] | None = None,
    ) -> tuple[httpx.Response, bytes]:
        """One HTTP request, the body read with a size cap (a media file could be anything)."""
        request = client.build_request(method, self.base + path, params=params, json=body, files=files)
        response = await client.send(request, stream=True)
        try:
            if response.status_code >= 500 or response.status_code == 429:
                raise WeComTransientError(f"HTTP {response.status_code}")
            if response.status_code != 200:
                raise WeComApiError(response.status_code, f"HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise MediaRefused(_too_large(int(declared), limit))
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > limit:
                    raise MediaRefused(_too_large(len(data), limit))
        finally:
            await response.aclose()
        return response, bytes(data)


def _too_large(size: int, limit: int) -> Message:
    return msg("bot_file_too_large", size_mb=f"{size / 1048576:.1f}", limit_mb=f"{limit / 1048576:g}")


def _looks_like_json(response: httpx.Response, data: bytes) -> bool:
    # media/get answers errors as JSON, sometimes labelled text/plain: trust the body's first byte too.
    return "json" in response.headers.get("content-type", "") or data.lstrip()[:1] == b"{"


def _json(response: httpx.Response, data: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise WeComTransientError(f"not JSON (HTTP {response.status_code})") from exc
    if not isinstance(payload, dict):
        raise WeComTransientError("unexpected JSON shape")
    return payload


def _raise_for_errcode(payload: dict[str, Any], *, token_call: bool) -> None:
    errcode = int(payload.get("errcode", 0))
    errmsg = str(payload.get("errmsg", ""))[:200]
    if errcode == 0:
        return
    if errcode in TRANSIENT_ERRCODES:
        raise WeComTransientError(f"errcode {errcode}: {errmsg}")
    if errcode in AUTH_ERRCODES or (token_call and errcode in TOKEN_ERRCODES):
        raise WeComAuthError(errcode, errmsg)
    raise WeComApiError(errcode, errmsg)
