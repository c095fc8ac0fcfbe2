"""A fake WeCom API server on 127.0.0.1: gettoken, media/get and /upload, message/send; failures on demand.

WeCom's servers cannot be reached from tests, so this stands in at the boundary. It keeps WeCom's shapes
(errcode/errmsg JSON, tokens in the query string, media as raw bytes with an image content type, JSON
errors for unknown media) and records what the bot sent.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class FakeWeCom:
    """State of the fake server; tests set `media`, `send_errors` and read `sent`."""

    corp_id: str
    secret: str
    url: str = ""
    media: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # media_id -> (bytes, content type)
    send_errors: list[int] = field(default_factory=list)  # errcodes message/send answers first, in order
    sent: list[dict[str, Any]] = field(default_factory=list)
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)  # media_id -> type, filename, size
    token_calls: int = 0
    media_calls: int = 0
    send_calls: int = 0
    valid_tokens: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def texts_to(self, user: str) -> list[str]:
        """The contents of the text messages sent to `user`, in order."""
        with self.lock:
            return [
                m["text"]["content"] for m in self.sent if m.get("touser") == user and m["msgtype"] == "text"
            ]

    def media_upload(self, query: dict[str, str], body: bytes) -> dict[str, Any]:
        """Record a multipart upload (its part's file name and the body size) and hand out a media_id."""
        with self.lock:
            error = self._token_error(query)
            if error is not None:
                return error
            named = re.search(rb'name="media"; filename="([^"]+)"', body)
            if named is None:
                return {"errcode": 41004, "errmsg": "media data missing"}
            media_id = f"media-{len(self.uploads) + 1}"
            kind = query.get("type", "")
            self.uploads[media_id] = {"type": kind, "filename": named.group(1).decode(), "size": len(body)}
            return {"errcode": 0, "errmsg": "ok", "type": kind, "media_id": media_id, "created_at": "1"}

    # -- the three endpoints ---------------------------------------------------------------------

    def gettoken(self, query: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            self.token_calls += 1
            if query.get("corpid") != self.corp_id:
                return {"errcode": 40013, "errmsg": "invalid corpid"}
            if query.get("corpsecret") != self.secret:
                return {"errcode": 40001, "errmsg": "invalid credential"}
            token = f"token-{self.token_calls}"
            self.valid_tokens.add(token)
            return {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200}

    def _token_error(self, query: dict[str, str]) -> dict[str, Any] | None:
        token = query.get("access_token", "")
        if not token:
            return {"errcode": 41001, "errmsg": "access_token missing"}
        if token not in self.valid_tokens:
            return {"errcode": 42001, "errmsg": "access_token expired"}
        return None

    def media_get(self, query: dict[str, str]) -> tuple[bytes, str] | dict[str, Any]:
        with self.lock:
            self.media_calls += 1
            error = self._token_error(query)
            if error is not None:
                return error
            item = self.media.get(query.get("media_id", ""))
            return item if item is not None else {"errcode": 40007, "errmsg": "invalid media_id"}

    def message_send(self, query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.send_calls += 1
            error = self._token_error(query)
            if error is not None:
                return error
            if self.send_errors:
                errcode = self.send_errors.pop(0)
                if errcode == 42001:  # the token really expired: only a fresh one works again
                    self.valid_tokens.clear()
                return {"errcode": errcode, "errmsg": "injected"}
            self.sent.append(body)
            return {"errcode": 0, "errmsg": "ok", "invaliduser": ""}


def _handler(fake: FakeWeCom) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def _query(self) -> dict[str, str]:
            return {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, payload: dict[str, Any]) -> None:
            self._reply(200, json.dumps(payload).encode(), "application/json; charset=UTF-8")

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/cgi-bin/gettoken":
                self._json(fake.gettoken(self._query()))
            elif path == "/cgi-bin/media/get":
                result = fake.media_get(self._query())
                if isinstance(result, dict):
                    self._reply(200, json.dumps(result).encode(), "text/plain")  # WeCom labels it loosely
                else:
                    self._reply(200, result[0], result[1])
            else:
                self._reply(404, b"not found", "text/plain")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            path = urlsplit(self.path).path
            if path == "/cgi-bin/media/upload":
                self._json(fake.media_upload(self._query(), raw))
            elif path == "/cgi-bin/message/send":
                self._json(fake.message_send(self._query(), json.loads(raw or b"{}")))
            else:
                self._reply(404, b"not found", "text/plain")

    return Handler


@contextmanager
def running_fake_wecom(corp_id: str, secret: str) -> Iterator[FakeWeCom]:
    """Serve a `FakeWeCom` on a free port of 127.0.0.1 for the duration of the block."""
    fake = FakeWeCom(corp_id=corp_id, secret=secret)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-wecom", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
