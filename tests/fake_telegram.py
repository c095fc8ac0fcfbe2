"""A fake Telegram Bot API server on 127.0.0.1 (aiohttp, in its own thread), for the real aiogram `Bot`.

Telegram cannot be reached from tests, so this stands in at the boundary with the Bot API's shapes:
`/bot{token}/{method}` answers `{"ok": true, "result": ...}` (401 for another token), `getUpdates` hands out
queued updates and long-polls briefly, `getFile` describes uploaded files and `/file/bot{token}/{path}`
serves their bytes. Everything the bot sent is recorded for the tests to read; files it uploads
(`sendPhoto`, `sendDocument`) are recorded as `{"filename", "content_type", "data"}`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

BOT_USER = {"id": 4242, "is_bot": True, "first_name": "图问", "username": "tuwen_bot"}
LONG_POLL_CAP_SECONDS = 0.5  # honour getUpdates' timeout, briefly, so the bot stops fast


@dataclass
class FakeTelegram:
    """State of the fake server; tests push updates and files, and read `calls` and `downloads`."""

    token: str
    url: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # file_id -> bytes
    downloads: list[str] = field(default_factory=list)
    fail_next: dict[str, int] = field(default_factory=dict)  # method -> how many 502s to answer first
    lock: threading.Lock = field(default_factory=threading.Lock)
    _updates: list[dict[str, Any]] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _loop: asyncio.AbstractEventLoop | None = None
    _arrived: asyncio.Event | None = None

    # -- for tests -------------------------------------------------------------------------------

    def add_file(self, file_id: str, data: bytes) -> None:
        """Make `file_id` downloadable."""
        with self.lock:
            self.files[file_id] = data

    def push(self, message: dict[str, Any]) -> None:
        """Queue an update carrying `message`, as if a user just sent it."""
        with self.lock:
            self._updates.append({"update_id": next(self._ids), "message": message})
        if self._loop is not None and self._arrived is not None:
            self._loop.call_soon_threadsafe(self._arrived.set)

    def sent(self, method: str = "sendMessage") -> list[dict[str, Any]]:
        """The parameters of every call of `method`, in order."""
        with self.lock:
            return [params for name, params in self.calls if name == method]

    def texts(self, chat_id: int | None = None) -> list[str]:
        """The texts of the messages the bot sent (to `chat_id`)."""
        return [p["text"] for p in self.sent() if chat_id is None or int(p["chat_id"]) == chat_id]

    # -- the server ------------------------------------------------------------------------------

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        method = request.match_info["method"]
        params = {key: _value(value) for key, value in (await request.post()).items()}
        with self.lock:
            self.calls.append((method, params))
            failing = self.fail_next.get(method, 0)
            if failing:
                self.fail_next[method] = failing - 1
        if failing:
            return web.json_response(
                {"ok": False, "error_code": 502, "description": "Bad Gateway"}, status=502
            )
        result = await self._answer(method, params)
        return web.json_response({"ok": True, "result": result})

    async def _answer(self, method: str, params: dict[str, Any]) -> Any:
        if method == "getMe":
            return BOT_USER
        if method == "getUpdates":
            return await self._get_updates(int(params.get("offset") or 0), float(params.get("timeout") or 0))
        if method == "getFile":
            file_id = params["file_id"]
            with self.lock:
                size = len(self.files.get(file_id, b""))
            return {
                "file_id": file_id,
                "file_unique_id": file_id,
                "file_size": size,
                "file_path": f"photos/{file_id}",
            }
        if method in ("sendMessage", "sendPhoto", "sendDocument"):
            chat = {"id": int(params["chat_id"]), "type": "private"}
            sent: dict[str, Any] = {
                "message_id": 10_000 + len(self.calls),
                "date": int(time.time()),
                "chat": chat,
                "from": BOT_USER,
            }
            if method == "sendMessage":
                sent["text"] = params["text"]
            elif method == "sendPhoto":
                sent["photo"] = [{"file_id": "p1", "file_unique_id": "p1", "width": 800, "height": 400}]
            else:
                sent["document"] = {"file_id": "d1", "file_unique_id": "d1"}
            return sent
        return True  # sendChatAction, setWebhook, deleteWebhook

    async def _get_updates(self, offset: int, timeout: float) -> list[dict[str, Any]]:
        assert self._arrived is not None
        deadline = time.monotonic() + min(timeout, LONG_POLL_CAP_SECONDS)
        while True:
            with self.lock:
                pending = [u for u in self._updates if u["update_id"] >= offset]
                self._updates = pending
            if pending or time.monotonic() >= deadline:
                return pending
            self._arrived.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), deadline - time.monotonic())

    async def _file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        path = request.match_info["path"]
        file_id = path.rsplit("/", 1)[-1]
        with self.lock:
            self.downloads.append(file_id)
            data = self.files.get(file_id)
        return web.Response(body=data) if data is not None else web.Response(status=404)


def _value(raw: Any) -> Any:
    if isinstance(raw, web.FileField):  # an upload: keep its bytes (the temporary file goes with the request)
        return {"filename": raw.filename, "content_type": raw.content_type, "data": raw.file.read()}
    # aiogram sends nested objects (reply_parameters, allowed_updates) as JSON strings.
    if isinstance(raw, str) and raw[:1] in "[{":
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


@contextmanager
def fake_telegram(token: str) -> Iterator[FakeTelegram]:
    """Run a `FakeTelegram` on a free port until the block ends."""
    fake = FakeTelegram(token=token)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner_box: list[web.AppRunner] = []

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", fake._method)
        app.router.add_get("/file/bot{token}/{path:.+}", fake._file)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        fake.url, fake._loop, fake._arrived = f"http://127.0.0.1:{port}", loop, asyncio.Event()
        runner_box.append(runner)
        started.set()

    thread = threading.Thread(target=loop.run_forever, name="fake-telegram", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    started.wait(10)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


# -- update builders ---------------------------------------------------------------------------------

_message_ids = itertools.count(100)


def message(
    *,
    chat_id: int = 1001,
    user_id: int = 1001,
    chat_type: str = "private",
    language: str | None = "zh-hans",
    **fields: Any,
) -> dict[str, Any]:
    """A Bot API `Message` from a user, with any extra fields (text, caption, photo, document, ...)."""
    user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": "访客"}
    if language is not None:
        user["language_code"] = language
    return {
        "message_id": next(_message_ids),
        "date": int(time.time()),
        "chat": {"id": chat_id, "type": chat_type, **({"title": "群"} if chat_type != "private" else {})},
        "from": user,
        **fields,
    }


def photo(file_id: str, size: int) -> list[dict[str, Any]]:
    """A `photo` field: a thumbnail and the full size (the bot must pick the largest)."""
    return [
        {
            "file_id": f"{file_id}-thumb",
            "file_unique_id": f"{file_id}-t",
            "width": 90,
            "height": 45,
            "file_size": 900,
        },
        {"file_id": file_id, "file_unique_id": file_id, "width": 600, "height": 300, "file_size": size},
    ]
