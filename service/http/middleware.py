"""Cross-cutting HTTP behaviour: request ids, CORS for listed origins, and text that the store can hold.

- `X-Request-ID`: a client's id (letters, digits, `-_.:`, at most 64) is echoed, otherwise one is made; it is
  recorded with the job (`jobs.request_id`) and named in the log line that ties it to the job, so a support
  request can be traced from a client's log to the history.
- CORS: `[http] cors_origins` lists the origins whose browsers may call the API (empty, the default: none;
  the pages are same-origin and need no CORS). Preflights for other origins get no CORS headers, so the
  browser refuses them.
"""

from __future__ import annotations

import re
import uuid

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.config import HttpConfig

REQUEST_ID_HEADER = "x-request-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestIdMiddleware:
    """Echo or make an `X-Request-ID`; put it on `request.state.request_id` (pure ASGI: streams untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next(
            (v.decode("latin-1") for k, v in scope.get("headers", []) if k == REQUEST_ID_HEADER.encode()), ""
        )
        request_id = given if _VALID_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


def install_middleware(api: FastAPI, http: HttpConfig) -> None:
    """Request ids always; CORS only for the configured origins."""
    if http.cors_origins:
        api.add_middleware(
            CORSMiddleware,
            allow_origins=list(http.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=[
                "authorization",
                "content-type",
                "x-request-id",
                "x-tuwen-source",
                "x-tuwen-conversation",
            ],
            expose_headers=["x-request-id", "retry-after"],
            max_age=600,
        )
    api.add_middleware(RequestIdMiddleware)
