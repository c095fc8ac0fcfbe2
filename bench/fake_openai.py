"""A local stand-in for vLLM's OpenAI-compatible server (aiohttp in a thread), for tests and bench/remote.py.

Like a continuously batching server it has no concurrency limit of its own: every request sleeps `latency`
seconds (plus whatever its plan says) on the event loop, so any number can be in flight at once, and
`max_in_flight` records the most that were.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from aiohttp import web

MODEL = "glm-test"
ROOT = "/models/GLM-4.6V-Flash"


class FakeOpenAIServer:
    """aiohttp on 127.0.0.1 in a background thread; records requests; follows a plan of failures.

    `plan` holds one entry per coming chat request: an int status (answered with an OpenAI error body),
    ("sleep", seconds) before answering normally, "break" (stream two pieces, then drop the connection) or
    None (answer normally). The reply text is `reply` or, by default, "答：" plus the last user text.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.plan: list[Any] = []
        self.reply: str | None = None
        self.reasoning_content: str | None = None
        self.error_message = "the server is overloaded"
        self.models_status = 200
        self.latency = 0.0  # seconds every chat request takes before its answer starts
        self.record_bodies = True  # False for benchmarks: thousands of base64 images add up
        self.in_flight = 0
        self.max_in_flight = 0
        self.answered = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        """Stop listening (connections are refused from now on); calling it again does nothing."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == "/v1/chat/completions"]

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _models(self, request: web.Request) -> web.Response:
        self.requests.append({"path": request.path, "headers": dict(request.headers), "json": None})
        if self.models_status != 200:
            error = {"message": self.error_message, "type": "Error", "code": self.models_status}
            return web.json_response({"error": error}, status=self.models_status)
        # vLLM's shape; `created` is the time of listing there, which is why the backend ignores it.
        entry = {
            "id": MODEL,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": ROOT,
        }
        return web.json_response({"object": "list", "data": [entry]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1  # one event loop thread: no lock needed
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer_chat(request)
        finally:
            self.in_flight -= 1
            self.answered += 1

    async def _answer_chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        recorded = body if self.record_bodies else {k: v for k, v in body.items() if k != "messages"}
        self.requests.append({"path": request.path, "headers": dict(request.headers), "json": recorded})
        if self.latency:
            await asyncio.sleep(self.latency)
        action = self.plan.pop(0) if self.plan else None
        if isinstance(action, int):
            error = {"message": self.error_message, "type": "BadRequestError", "param": None, "code": action}
            return web.json_response({"error": error}, status=action)
        if isinstance(action, tuple):
            await asyncio.sleep(action[1])
        question = body["messages"][-1]["content"]
        if isinstance(question, list):
            question = question[-1]["text"]
        text = self.reply if self.reply is not None else f"答：{question}"
        usage = {"prompt_tokens": 901, "completion_tokens": len(text), "total_tokens": 901 + len(text)}
        if not body.get("stream"):
            message = {"role": "assistant", "content": text, "reasoning_content": self.reasoning_content}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return web.json_response(
                {"id": "c1", "object": "chat.completion", "choices": [choice], "usage": usage}
            )
        return await self._sse(request, text, usage, broken=action == "break")

    async def _sse(
        self, request: web.Request, text: str, usage: dict[str, int], broken: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await response.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())

        await send({"role": "assistant", "content": ""})
        await response.write(b": keep-alive comment\n\n")
        if self.reasoning_content:
            await send({"reasoning_content": self.reasoning_content})
        pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
        for number, piece in enumerate(pieces):
            await send({"content": piece})
            if broken and number == 1:
                assert request.transport is not None
                request.transport.close()
                return response
        await send({}, finish="stop")
        usage_chunk = {"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": usage}
        await response.write(f"data: {json.dumps(usage_chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
