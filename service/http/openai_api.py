"""The OpenAI/vLLM-compatible API: `POST /v1/chat/completions` and `GET /v1/models`.

A chat request becomes one INTERACTIVE job (docs/http-contract.md): question = the last user message's
text, images = every image of the conversation in order (stored under data_dir/uploads), history = the
earlier turns' text. Choices a client may notice:
- System (and "developer") messages are accepted and ignored: a job's conversation is user and assistant
  turns only (`service.backends.base.Turn`, the history table), so a client's system prompt has nowhere to
  go that every backend and the review pages would honour. Clients written for OpenAI send one by habit;
  refusing them would break those clients for no gain.
- A last user message with an image but no text gets the default question (describe the picture).
- `model` is accepted whatever it says and recorded as `client_model`; there is one model.
- The order of checks is chosen so refusing is cheap: credentials (401), model state (503) and the queue
  (429) before a byte of the body is read; then the body, read with a cap whatever Content-Length says (413),
  the JSON (400), and the images, each decoded the way the worker will before anything is queued. An image
  that cannot be used is answered 413/422 *and* recorded in the history as a failed job, like every call.
- A job that fails is 422 with its own message and code; one not done after `[http] request_timeout_seconds`
  is 504 and stays queued, and is answered into the history later.
- Streaming relays the worker's `on_text` pieces from its thread to the event loop (`call_soon_threadsafe`
  into an `asyncio.Queue`); an error after the 200 went out is sent as an OpenAI error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from db.models import Job, JobStatus
from service.events import Event, Priority, Source
from service.http.auth import Scope
from service.http.chat_shapes import (
    ChatRequest,
    Conversation,
    Refused,
    bad,
    completion_body,
    conversation_of,
    error_event,
    finish_reason,
    job_error,
    parse_chat_request,
    read_body,
    sse,
    usage_of,
)
from service.http.context import HttpContext
from service.http.errors import ApiError
from service.logs import job_context
from service.messages import Message, msg
from service.queue import QueueFull, WorkerUnavailable
from service.uploads import ImageRejected, check_decodes, save_image

log = logging.getLogger(f"tuwen.{__name__}")

PAGE_SOURCES = {Source.WEB, Source.KIOSK}
WAIT_TICK_SECONDS = 1.0  # how often a waiting request checks that the worker is still there
GONE_STATES = {"failed", "dead", "stopped"}
_DONE = None  # end-of-answer marker in a streaming relay's queue


def header_source(request: Request) -> str:
    """The source label a request asks for: `web`/`kiosk` from X-Tuwen-Source, anything else `api`."""
    label = request.headers.get("x-tuwen-source", "").strip().lower()
    return Source(label) if label in PAGE_SOURCES else Source.API


class _Relay:
    """The worker's `on_text` for one job: times the first piece and hands pieces to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, streaming: bool, on_first: Callable[[float], None]):
        self.loop = loop
        self.queue: asyncio.Queue[str | None] | None = asyncio.Queue() if streaming else None
        self.on_first = on_first
        self.started = time.monotonic()
        self.first_seen = False

    def on_text(self, piece: str) -> None:
        """Runs on the worker thread; must never raise (the backend would abandon the answer)."""
        try:
            if not self.first_seen:
                self.first_seen = True
                self.on_first(time.monotonic() - self.started)
            if self.queue is not None:
                _call_soon(self.loop, self.queue.put_nowait, piece)
        except Exception:
            log.exception("relaying a streamed piece failed")


class ChatApi:
    """The chat endpoint's state: admission (429) and a recent job time for Retry-After."""

    def __init__(self, ctx: HttpContext) -> None:
        self.ctx = ctx
        self.app = ctx  # config, store, queue, worker
        self.metrics = ctx.metrics

    def source_of(self, request: Request) -> str:
        """`web`/`kiosk` from X-Tuwen-Source, else `api`; a kiosk-only credential always makes `kiosk`."""
        return header_source(request) if Scope.FULL in self.ctx.auth.scopes_of(request) else Source.KIOSK

    async def handle(self, request: Request) -> Response:
        """Answer one chat request, counting it (and any refusal) in the metrics."""
        source = self.source_of(request)
        try:
            response = await self._chat(request, source)
        except ApiError as exc:
            self.metrics.request(source, exc.status)
            self.metrics.rejected(exc.status, getattr(exc, "reason", None))
            raise
        self.metrics.request(source, 200)
        return response

    def _check_worker(self) -> None:
        worker = self.app.worker
        if not worker.alive or not self.app.queue.accepting:
            reason = str(worker.error.en) if worker.error else worker.state
            raise Refused(503, msg("api_model_unavailable", reason=reason))

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        """One interactive slot (the queue's one admission rule), as the API's 429/503."""
        try:
            with self.app.queue.admit(self.app.config.http.max_queue):
                yield
        except QueueFull as full:
            message = msg("api_queue_full", limit=full.limit, seconds=full.retry_after)
            raise Refused(429, message, headers={"Retry-After": str(full.retry_after)}) from None
        except WorkerUnavailable:
            self._check_worker()
            raise Refused(503, msg("api_model_unavailable", reason="shutting down")) from None

    async def _chat(self, request: Request, source: str) -> Response:
        """Parse → admit → store the images → submit → relay, each once.

        A request holds an interactive slot only from admission, after its body has been read and checked
        (a client trickling its body in, or sending garbage, never holds one), until its job is submitted;
        from then on the queue counts the job itself. Every way out in between gives the slot back.
        """
        http = self.app.config.http
        self._check_worker()
        chat, conversation, conversation_id = await self._parse(request)
        with self._admitted():
            event = self._event(chat, conversation, source, conversation_id, request)
            event = await self._with_images(event, conversation.image_urls)
            loop = asyncio.get_running_loop()
            relay = _Relay(loop, chat.stream, lambda seconds: self.metrics.first_piece(source, seconds))
            try:
                job = await asyncio.to_thread(self.app.queue.submit, event, on_text=relay.on_text)
            except RuntimeError as exc:  # the queue stopped accepting: the service is shutting down
                raise Refused(503, msg("api_model_unavailable", reason="shutting down")) from exc
        with job_context(job.uid):
            log.info(
                "%s chat request %s: %d image(s), %d earlier turn(s), stream=%s",
                source,
                event.request_id,
                len(event.images),
                len(event.history),
                chat.stream,
            )
        future = self.app.queue.result(job.uid)
        created = int(time.time())
        if chat.stream:
            stream = self._stream(job, future, relay, chat, source, created)
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        finished = await self._wait(job.uid)
        if finished.status != JobStatus.DONE:
            raise Refused(422, job_error(finished), reason="job_failed")
        if not relay.first_seen:  # answered without streaming (multi-page TIFF): first text is all text
            self.metrics.first_piece(source, time.monotonic() - relay.started)
        name, max_new = http.model_name, self._max_new_tokens(chat)
        return JSONResponse(completion_body(finished, name, created, max_new))

    async def _parse(self, request: Request) -> tuple[ChatRequest, Conversation, str | None]:
        """The request read (size cap and deadline), validated and turned into a conversation; 400s."""
        http = self.app.config.http
        conversation_id = request.headers.get("x-tuwen-conversation") or None
        if conversation_id is not None and len(conversation_id) > 128:
            raise bad("X-Tuwen-Conversation is longer than 128 characters")
        limit = int(http.max_body_mb * 1024 * 1024)
        body = await read_body(request, limit, http.max_body_mb, http.body_timeout_seconds)
        chat = parse_chat_request(body)
        del body
        return chat, conversation_of(chat, http.max_images_per_request), conversation_id

    def _event(
        self,
        chat: ChatRequest,
        conv: Conversation,
        source: str,
        conversation_id: str | None,
        request: Request,
    ) -> Event:
        kb = chat.knowledge_base_id
        return Event(
            source=source,
            question=conv.question,
            images=(),
            priority=Priority.INTERACTIVE,
            conversation_id=conversation_id,
            history=conv.history,
            options=chat.options(),
            client_model=chat.model,
            knowledge_base_id=str(kb) if kb is not None else None,
            request_id=getattr(request.state, "request_id", None),
        )

    async def _with_images(self, event: Event, urls: tuple[str, ...]) -> Event:
        """Store and check every image; on a bad one record a failed job and refuse (413/422/400)."""
        config = self.app.config
        paths: list[str] = []
        pixels = 0
        try:
            for url in urls:
                stored = await save_image(url, config)
                paths.append(str(stored.path))
                pixels += await asyncio.to_thread(check_decodes, stored.path, config.images, "api")
                if pixels > config.http.max_pixels_per_request:
                    limit = config.http.max_pixels_per_request
                    message = msg("api_too_many_pixels", pixels=pixels, limit=limit)
                    raise ImageRejected(400, message)
        except ImageRejected as exc:
            job = await asyncio.to_thread(
                self._record_refused, replace(event, images=tuple(paths)), exc.message
            )
            with job_context(job.uid):
                log.info("refused an image: %s", exc.message.en)
            reason = {413: "too_large", 422: "bad_image"}.get(exc.status)
            raise Refused(exc.status, exc.message, reason=reason, param="messages") from exc
        # No `sha256` on the event: it would let a folder job reuse an answer given with a chat's history.
        return replace(event, images=tuple(paths))

    def _record_refused(self, event: Event, message: Message) -> Job:
        """A call refused for its image is still history: a failed job that never reached the model."""
        return self.app.queue.record_refused(event, message)

    def _worker_gone(self) -> bool:
        return self.app.worker.state in GONE_STATES

    async def _wait(self, uid: str) -> Job:
        """The finished job; 504 after the request timeout, 503 if the worker goes away meanwhile."""
        timeout = self.app.config.http.request_timeout_seconds
        try:
            return await self.app.queue.wait(uid, timeout, gone=self._worker_gone, tick=WAIT_TICK_SECONDS)
        except WorkerUnavailable:
            raise Refused(503, msg("api_model_unavailable", reason=self.app.worker.state)) from None
        except TimeoutError:
            with job_context(uid):
                log.warning("no answer within %g s; it stays queued", timeout)
            raise Refused(504, msg("api_timeout", seconds=f"{timeout:g}")) from None

    async def _stream(
        self, job: Job, future: Future[Job], relay: _Relay, chat: ChatRequest, source: str, created: int
    ) -> AsyncIterator[str]:
        """Server-sent events: a role chunk, content deltas, a finish chunk, usage if asked, [DONE]."""
        assert relay.queue is not None
        pieces = relay.queue
        loop = asyncio.get_running_loop()
        future.add_done_callback(lambda _: _call_soon(loop, pieces.put_nowait, _DONE))
        head = {"id": f"chatcmpl-{job.uid}", "object": "chat.completion.chunk", "created": created}
        head["model"] = self.app.config.http.model_name
        with_usage = bool(chat.stream_options and chat.stream_options.include_usage)

        def event(choices: list[dict[str, Any]], **fields: Any) -> str:
            return sse({**head, "choices": choices, **({"usage": None} if with_usage else {}), **fields})

        def delta(content: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}]

        yield event(delta({"role": "assistant", "content": ""}))
        sent: list[str] = []
        try:
            async for piece in self._pieces(pieces):
                sent.append(piece)
                yield event(delta({"content": piece}))
        except Refused as exc:  # the 200 has gone out: the error travels as an event
            self.metrics.rejected(exc.status, exc.reason)
            yield error_event(exc.status, exc.message)
            return
        finished = future.result()
        if finished.status != JobStatus.DONE:
            self.metrics.rejected(422, "job_failed")
            yield error_event(422, job_error(finished))
            return
        answer, streamed = finished.answer or "", "".join(sent)
        if not sent:  # answered without streaming (multi-page TIFF): first text is all text
            self.metrics.first_piece(source, time.monotonic() - relay.started)
        if answer.startswith(streamed) and len(answer) > len(streamed):
            yield event(delta({"content": answer[len(streamed) :]}))
        elif answer != streamed:
            with job_context(job.uid):
                log.warning("streamed text differs from the recorded answer")
        finish = finish_reason(finished, self._max_new_tokens(chat))
        yield event(delta({}, finish), model_version=finished.model_version, answer_kind=finished.answer_kind)
        if with_usage:
            yield sse({**head, "choices": [], "usage": usage_of(finished)})
        yield sse("[DONE]")

    async def _pieces(self, pieces: asyncio.Queue[str | None]) -> AsyncIterator[str]:
        """The relayed pieces until the job ends; 504 after the request timeout, 503 if the worker goes."""
        loop = asyncio.get_running_loop()
        timeout = self.app.config.http.request_timeout_seconds
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            try:
                piece = await asyncio.wait_for(pieces.get(), timeout=min(remaining, WAIT_TICK_SECONDS))
            except TimeoutError:
                if self._worker_gone():
                    raise Refused(503, msg("api_model_unavailable", reason=self.app.worker.state)) from None
                continue
            if piece is _DONE:
                return
            yield piece
        raise Refused(504, msg("api_timeout", seconds=f"{timeout:g}"))

    def _max_new_tokens(self, chat: ChatRequest) -> int:
        # The same rule as the worker's: the request may ask for fewer tokens than the config, never more.
        configured = self.app.config.model.max_new_tokens
        return min(chat.max_completion_tokens or chat.max_tokens or configured, configured)

    def models(self) -> dict[str, Any]:
        """The one model, with what actually answers behind the name."""
        worker = self.app.worker
        backend = worker.backend
        entry = {
            "id": self.app.config.http.model_name,
            "object": "model",
            "created": int(self.app.started_at),
            "owned_by": "tuwen",
            "root": backend.model_id if backend else self.app.config.model.path,
            "backend": self.app.config.model.backend,
            "model_version": backend.model_version if backend else None,
            "state": worker.state,
            "max_new_tokens": self.app.config.model.max_new_tokens,
        }
        return {"object": "list", "data": [entry]}


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: object) -> None:
    """`call_soon_threadsafe` from the worker thread, quiet when the loop has already closed."""
    # A closed loop means the server is stopping; the answer still goes to the history.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def build_router(ctx: HttpContext) -> APIRouter:
    """`POST /v1/chat/completions` (FULL or KIOSK scope) and `GET /v1/models` (FULL)."""
    router = APIRouter()
    api = ChatApi(ctx)

    guard = ctx.metrics.require(Scope.KIOSK, source_of=header_source)

    @router.post("/v1/chat/completions", dependencies=[Depends(guard)])
    async def chat_completions(request: Request) -> Response:
        """OpenAI/vLLM chat completions, streaming or not."""
        return await api.handle(request)

    @router.get("/v1/models", dependencies=[Depends(ctx.metrics.require(Scope.FULL))])
    def list_models() -> dict[str, Any]:
        """The model name clients should send, with the backend behind it."""
        return api.models()

    @router.get("/v1/models/{model_id:path}", dependencies=[Depends(ctx.metrics.require(Scope.FULL))])
    def get_model(model_id: str) -> dict[str, Any]:
        """One model (OpenAI's retrieve-model call); 404 in OpenAI's shape for any other name."""
        entry = api.models()["data"][0]
        if model_id != entry["id"]:
            message = msg("api_model_not_found", model=model_id, served=entry["id"])
            raise ApiError(404, message, param="model")
        return dict(entry)

    return router
