"""The hall-screen feed: newly answered jobs pushed to `/feed` pages over server-sent events.

- `GET /api/feed/events` (FEED scope, SSE): on connect the `[feed] limit` most recent matching done jobs
  (oldest first, so a page can put each on top as it comes), then every newly done matching job as event
  `item`. A job that staff review later is sent again with the same id, so a corrected answer replaces the
  wrong one on the screen. Keep-alive comments every ~15 s stop proxies and NAT boxes from dropping an idle
  connection.
- `GET /api/feed/thumbnail/{id}` (FEED scope): the thumbnail of a job the feed may show, 404 for any other,
  so a hall-screen token cannot page through the rest of the history.
- `GET /api/config/feed` (FEED scope): the page's heading and how many items it keeps.

Fan-out: the model worker thread finishes jobs, and it must never wait on a browser. One `FeedHub` per
running service registers one finished-listener on its queue and hands each matching item to every connected
client with `loop.call_soon_threadsafe` into that client's bounded asyncio queue; a client too slow to keep
up loses its oldest items, never blocks anyone.

Stopping: a stream ends when the client goes away (Starlette cancels the generator), when `close_feeds` is
called, when the queue stops accepting work, or when uvicorn starts a graceful shutdown. uvicorn waits for
every open response before it exits and tells the application nothing, so an endless stream would hold a
shutdown forever; see `_server_draining` for how we notice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import ColumnElement, and_, false, or_, select

from db.models import Job, JobStatus, ReviewStatus
from service.config import FeedConfig
from service.events import Source
from service.http.auth import Scope, require
from service.http.context import HttpContext
from service.http.errors import ApiError
from service.messages import msg
from service.thumbnails import thumbnail_bytes

log = logging.getLogger(f"tuwen.{__name__}")

KEEPALIVE_SECONDS = 15.0
# How often a quiet stream looks whether it should end (server stopping); short so shutdown stays quick.
POLL_SECONDS = 0.5
# Items a client may fall behind before its oldest are dropped: more than a screenful, little memory.
CLIENT_BOUND = 64
RECONNECT_MILLISECONDS = 5000


@dataclass(eq=False)
class FeedClient:
    """One connected page: its event loop and its bounded queue of items (None means "stop")."""

    loop: asyncio.AbstractEventLoop
    items: asyncio.Queue[dict[str, Any] | None]
    dropped: int = field(default=0)

    def offer(self, item: dict[str, Any] | None) -> None:
        """Queue an item, dropping the oldest when full. Runs on `loop`, so no lock is needed."""
        while self.items.full():
            self.items.get_nowait()
            self.dropped += 1
        self.items.put_nowait(item)


class FeedHub:
    """Which jobs the feed shows, and the connected clients they go to."""

    def __init__(self, feed_config: FeedConfig, bound: int = CLIENT_BOUND) -> None:
        self.config = feed_config
        self.bound = bound
        self.closed = False
        self._clients: set[FeedClient] = set()
        self._lock = threading.Lock()  # publish() runs on the worker thread, subscribe() on the loop

    # -- which jobs ------------------------------------------------------------------------------

    def matches(self, job: Job) -> bool:
        """Whether a done job belongs on the feed under `[feed] sources` and `watches`.

        Private by default: a folder's scans appear only when the folder is named in `[feed] watches`
        (archive scans are often restricted, and a hall screen must be opted into, folder by folder).
        Other sources appear when `[feed] sources` lists them.
        """
        if job.status != JobStatus.DONE:
            return False
        if job.source == Source.WATCH:
            return job.source_ref in self.config.watches
        return job.source in self.config.sources

    def condition(self) -> ColumnElement[bool]:
        """`matches` as a SQL condition, for the items sent on connect."""
        sources = [s for s in self.config.sources if s != Source.WATCH]
        watches = list(self.config.watches)
        shown = or_(
            and_(Job.source == Source.WATCH, Job.source_ref.in_(watches)) if watches else false(),
            Job.source.in_(sources) if sources else false(),
        )
        return and_(Job.status == JobStatus.DONE, shown)

    # -- clients ---------------------------------------------------------------------------------

    def subscribe(self) -> FeedClient:
        """A new client on the running loop (call from the loop)."""
        client = FeedClient(asyncio.get_running_loop(), asyncio.Queue(self.bound))
        with self._lock:
            self._clients.add(client)
        return client

    def unsubscribe(self, client: FeedClient) -> None:
        """Forget a client (its stream ended)."""
        with self._lock:
            self._clients.discard(client)

    @property
    def client_count(self) -> int:
        """How many pages are connected."""
        with self._lock:
            return len(self._clients)

    def publish(self, job: Job) -> None:
        """The queue's listener: hand a matching job to every client (any thread; never blocks)."""
        if self.closed or not self.matches(job):
            return
        self._send(feed_item(job))

    def close(self) -> None:
        """End every stream (server stopping); new streams end at once."""
        self.closed = True
        self._send(None)

    def _send(self, item: dict[str, Any] | None) -> None:
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            try:
                client.loop.call_soon_threadsafe(client.offer, item)
            except RuntimeError:  # that client's loop is closed: the server is gone
                self.unsubscribe(client)


# One hub per running App, keyed by its queue: the listener is registered once however many HTTP apps are
# built on it, and a finished App takes its hub with it.
_HUBS: weakref.WeakKeyDictionary[Any, FeedHub] = weakref.WeakKeyDictionary()
_HUBS_LOCK = threading.Lock()


def hub_for(app: HttpContext) -> FeedHub:
    """The feed hub of a running service, created (and registered with its queue) on first use."""
    with _HUBS_LOCK:
        hub = _HUBS.get(app.queue)
        if hub is None:
            hub = _HUBS[app.queue] = FeedHub(app.config.feed)
            app.queue.add_finished_listener(hub.publish)
            app.queue.add_updated_listener(hub.publish)
        return hub


def close_feeds(app: HttpContext) -> None:
    """End every open feed stream of `app` now: call before stopping the HTTP server."""
    with _HUBS_LOCK:
        hub = _HUBS.get(app.queue)
    if hub is not None:
        hub.close()


def feed_item(job: Job) -> dict[str, Any]:
    """The `item` event's data for a job (the staff's correction, when there is one, is the answer)."""
    corrected = job.review_status == ReviewStatus.CORRECTED and job.correction
    return {
        "id": job.id,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "source": job.source,
        "source_ref": job.source_ref,
        "file_name": os.path.basename(job.file_path) if job.file_path else None,
        "question": job.question,
        "answer": job.correction if corrected else job.answer,
        "answer_kind": None if corrected else job.answer_kind,
        "thumbnail_url": f"/api/feed/thumbnail/{job.id}",
    }


def recent_items(app: HttpContext, hub: FeedHub) -> list[dict[str, Any]]:
    """The newest `[feed] limit` matching done jobs, oldest first."""
    query = (
        select(Job)
        .where(hub.condition())
        .order_by(Job.finished_at.desc(), Job.id.desc())
        .limit(app.config.feed.limit)
    )
    with app.store.read_session() as session:
        jobs = list(session.scalars(query))
    return [feed_item(job) for job in reversed(jobs)]


def sse_event(item: dict[str, Any]) -> str:
    """One `item` event; its id lets a reconnecting browser say where it was."""
    data = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
    return f"event: item\nid: {item['id']}\ndata: {data}\n\n"


def _keep_alive_flag(request: Request) -> bool | None:
    # uvicorn hands the application `cycle.receive`, a bound method of the connection's request cycle. When
    # it starts a graceful shutdown it clears `keep_alive` on every cycle still responding (to close the
    # connection after the response) and then waits for those responses to end; that flag is the only sign
    # of the shutdown an application can see. None under other servers.
    cycle = getattr(request.receive, "__self__", None)
    flag = getattr(cycle, "keep_alive", None)
    return flag if isinstance(flag, bool) else None


def _server_draining(request: Request, keep_alive_at_start: bool | None) -> bool:
    return keep_alive_at_start is True and _keep_alive_flag(request) is False


async def event_stream(request: Request, app: HttpContext, hub: FeedHub) -> AsyncIterator[str]:
    """The SSE body: recent items, then live ones and keep-alives until told to stop."""
    client = hub.subscribe()  # before reading the recent items, so nothing finishing meanwhile is missed
    keep_alive_at_start = _keep_alive_flag(request)
    try:
        yield f"retry: {RECONNECT_MILLISECONDS}\n\n"
        for recent in await asyncio.to_thread(recent_items, app, hub):
            yield sse_event(recent)
        last_write = time.monotonic()
        while not (hub.closed or not app.queue.accepting or _server_draining(request, keep_alive_at_start)):
            try:
                item = await asyncio.wait_for(client.items.get(), POLL_SECONDS)
            except TimeoutError:
                if time.monotonic() - last_write >= KEEPALIVE_SECONDS:
                    yield ": keep-alive\n\n"
                    last_write = time.monotonic()
                continue
            if item is None:
                break
            yield sse_event(item)
            last_write = time.monotonic()
    finally:
        hub.unsubscribe(client)
        if client.dropped:
            log.info("a slow feed client missed %d item(s)", client.dropped)


def build_router(ctx: HttpContext) -> APIRouter:
    """`/api/feed/events`, `/api/feed/thumbnail/{id}` and `/api/config/feed`."""
    router = APIRouter()
    app = ctx
    hub = ctx.feed = hub_for(ctx)
    feed_scope = Depends(require(ctx.auth, Scope.FEED))

    @router.get("/api/feed/events", dependencies=[feed_scope])
    def events(request: Request) -> StreamingResponse:
        """Server-sent events: recent items on connect, then each newly answered one."""
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # nginx: do not buffer the stream
        return StreamingResponse(
            event_stream(request, app, hub), media_type="text/event-stream", headers=headers
        )

    @router.get("/api/feed/thumbnail/{job_id}", dependencies=[feed_scope])
    def thumbnail(job_id: int) -> Response:
        """The JPEG thumbnail of a job the feed shows."""
        job = app.store.get(job_id)
        data = (
            thumbnail_bytes(job, app.config.storage.data_dir, app.config.images)
            if job and hub.matches(job)
            else None
        )
        if data is None:
            raise ApiError(404, msg("api_not_found", what=f"thumbnail {job_id}"))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @router.get("/api/config/feed", dependencies=[feed_scope])
    def feed_config() -> dict[str, Any]:
        """The feed page's heading and how many items it keeps on screen."""
        return {"title": app.config.feed.title, "limit": app.config.feed.limit}

    return router
