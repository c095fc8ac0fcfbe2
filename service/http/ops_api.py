"""Operations over JSON: who am I, the watches' progress, re-runs and the backlog pause.

- GET  /api/me                       the caller's name and role, and what that role may do (any role)
- GET  /api/watches                  per watch: queued, running, done, failed, throughput, time left; the
                                     backlog's pause state (any role)
- POST /api/jobs/{id}/rerun          queue the job again (`service/reruns.py`), admin
- POST /api/watches/{name}/rerun     `{"which": "missing" | "failed" | "all"}`, admin
- POST /api/backlog/pause, /resume   hold or release folder and batch jobs (`service/backlog.py`), admin

Every change is written to the audit log with who did it. State-changing routes are behind the same
cross-site check as every POST (`auth.refusal`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from db import ops
from db.audit import Action
from db.models import Role
from service.http.auth import Scope, require
from service.http.context import HttpContext
from service.http.errors import ApiError
from service.http.history_api import check_choice, job_summary
from service.messages import msg
from service.reruns import WHICH, RerunRefused, Reruns

# What each role may do, for the pages (they hide what the role cannot use; the routes check it).
ABILITIES: dict[str, Role] = {
    "read": Role.VIEWER,
    "review": Role.REVIEWER,
    "rerun": Role.ADMIN,
    "pause": Role.ADMIN,
    "audit": Role.ADMIN,
    "users": Role.ADMIN,
}


class WatchRerunBody(BaseModel):
    """`POST /api/watches/{name}/rerun`."""

    model_config = ConfigDict(extra="forbid")
    which: str = "failed"


def build_router(ctx: HttpContext) -> APIRouter:
    """The operations routes, bound to the running service."""
    router = APIRouter(dependencies=[Depends(require(ctx.auth, Scope.FULL))])
    admin = [Depends(require(ctx.auth, Scope.FULL, role=Role.ADMIN))]
    reruns = Reruns(ctx.config, ctx.queue)

    def record(request: Request, action: str, target: str, details: dict[str, Any]) -> None:
        actor = ctx.auth.actor(request)
        address = request.client.host if request.client else ""
        ctx.audit.record(actor.name, action, target, details, role=actor.role, address=address)

    @router.get("/api/me")
    def me(request: Request) -> dict[str, Any]:
        """Who the caller is and what their role may do."""
        actor = ctx.auth.actor(request)
        can = {name: actor.role.allows(needed) for name, needed in ABILITIES.items()}
        return {"name": actor.name, "role": actor.role.value, "can": can}

    @router.get("/api/watches")
    def watches() -> dict[str, Any]:
        """Each configured watch's progress and the backlog's pause state."""
        progress = ops.watch_progress(ctx.store)
        backlog = ctx.backlog.state()
        items = [_watch_item(w.key, w.name, progress.get(w.key), backlog["paused"]) for w in ctx.config.watch]
        return {"backlog": backlog, "watches": items}

    @router.post("/api/jobs/{job_id:int}/rerun", dependencies=admin)
    def rerun_job(job_id: int, request: Request) -> dict[str, Any]:
        """Queue the job again; answers the new job's summary with `rerun_of` and a message."""
        job = ctx.store.get(job_id)
        if job is None:
            raise ApiError(404, msg("api_not_found", what=f"job {job_id}"))
        try:
            fresh = reruns.rerun_job(job)
        except RerunRefused as exc:
            raise ApiError(exc.status, exc.message) from exc
        record(request, Action.JOB_RERUN, f"job:{job_id}", {"new_job": fresh.id})
        message = msg("rerun_queued", job=fresh.id, previous=job_id)
        return {**job_summary(fresh), "rerun_of": job_id, "message": message.zh, "message_en": message.en}

    @router.post("/api/watches/{name}/rerun", dependencies=admin)
    def rerun_watch(name: str, body: WatchRerunBody, request: Request) -> dict[str, Any]:
        """Queue again a watch's missing, failed or all files."""
        check_choice("which", body.which, WHICH, required=True)
        try:
            done = reruns.rerun_watch(name, body.which)
        except RerunRefused as exc:
            raise ApiError(exc.status, exc.message) from exc
        details = {"which": body.which, "queued": len(done.queued), "skipped": done.skipped}
        record(request, Action.WATCH_RERUN, f"watch:{done.watch}", details)
        message = msg("watch_rerun_queued", name=done.watch, count=len(done.queued), which=body.which)
        return {
            "watch": done.watch,
            "which": done.which,
            "queued": done.queued,
            "count": len(done.queued),
            "skipped": done.skipped,
            "message": message.zh,
            "message_en": message.en,
        }

    @router.post("/api/backlog/pause", dependencies=admin)
    def pause(request: Request) -> dict[str, Any]:
        """Hold the backlog (kept across restarts); questions people ask are still answered."""
        return set_paused(request, True)

    @router.post("/api/backlog/resume", dependencies=admin)
    def resume(request: Request) -> dict[str, Any]:
        """Release the backlog."""
        return set_paused(request, False)

    def set_paused(request: Request, paused: bool) -> dict[str, Any]:
        ctx.backlog.set(paused, ctx.auth.actor(request).name)
        record(request, Action.BACKLOG_PAUSE if paused else Action.BACKLOG_RESUME, "backlog", {})
        if not paused:
            ctx.queue.notify()  # the worker may be waiting with backlog jobs due
        message = msg("backlog_paused" if paused else "backlog_resumed")
        return {**ctx.backlog.state(), "message": message.zh, "message_en": message.en}

    return router


def _watch_item(key: str, name: str, counts: dict[str, Any] | None, paused: bool) -> dict[str, Any]:
    counts = counts or ops.watch_progress_empty()
    per_minute = counts["done_last_hour"] / 60
    left = counts["queued"] + counts["running"]
    seconds_left: int | None = 0
    if left:
        # At the last hour's pace; unknown (null) when nothing was done in the last hour or it is paused.
        seconds_left = round(left / per_minute * 60) if per_minute and not paused else None
    return {
        "key": key,
        "name": name,
        "queued": counts["queued"],
        "running": counts["running"],
        "done": counts["done"],
        "failed": counts["failed"],
        "done_last_hour": counts["done_last_hour"],
        "per_minute": round(per_minute, 2),
        "seconds_left": seconds_left,
        "paused": paused,
    }
