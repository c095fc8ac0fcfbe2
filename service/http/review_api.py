"""Staff review over JSON (docs/http-contract.md, "History and review"), behind the FULL scope.

- POST /api/jobs/{id}/review      a verdict (and correction), reviewer role; `reviewed_by` is who gave it,
                                  the audit log gets a `job.review` row; folder jobs get their sidecars
                                  rewritten (the folder watcher's updated-job listener)
- POST /api/review/sample         random unreviewed done jobs (reviewer role)
- GET  /api/review/stats          accuracy of reviewed answers with a Wilson 95 % interval (any role)
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from db.audit import Action, AuditLog
from db.history import review_stats, sample_for_review, stats_dict
from db.models import Job, ReviewStatus, Role
from db.store import ReviewRejected
from service.http.auth import Scope, require
from service.http.context import HttpContext
from service.http.errors import ApiError
from service.http.history_api import check_choice, job_summary
from service.messages import msg

MAX_CORRECTION_CHARS = 20_000
MAX_SAMPLE = 200


class ReviewBody(BaseModel):
    """`POST /api/jobs/{id}/review`."""

    verdict: str
    correction: str | None = None


class SampleBody(BaseModel):
    """`POST /api/review/sample`."""

    n: int = 20


def build_router(ctx: HttpContext) -> APIRouter:
    """The review routes, bound to the running service."""
    router = APIRouter(dependencies=[Depends(require(ctx.auth, Scope.FULL))])
    store = ctx.store
    audit = AuditLog(store)
    reviewer = [Depends(require(ctx.auth, Scope.FULL, role=Role.REVIEWER))]

    @router.post("/api/jobs/{job_id:int}/review", dependencies=reviewer)
    def review_job(job_id: int, body: ReviewBody, request: Request) -> dict[str, Any]:
        """Record a verdict; listeners (the folder watcher) rewrite sidecars with the correction."""
        check_choice("verdict", body.verdict, ReviewStatus.ALL, required=True)
        if body.correction is not None and len(body.correction) > MAX_CORRECTION_CHARS:
            raise ApiError(
                400,
                msg("review_correction_too_long", length=len(body.correction), limit=MAX_CORRECTION_CHARS),
                param="correction",
            )
        actor = ctx.auth.actor(request)
        try:
            job = store.set_review(job_id, body.verdict, body.correction, reviewed_by=actor.reviewer)
        except ReviewRejected as exc:
            raise _review_error(exc, store.get(job_id)) from exc
        if job is None:
            raise ApiError(404, msg("api_not_found", what=f"job {job_id}"))
        details = {"verdict": body.verdict, "corrected": job.correction is not None}
        audit.record(actor.name, Action.JOB_REVIEW, f"job:{job_id}", details, role=actor.role)
        ctx.queue.updated(job)
        return job_summary(job)

    @router.post("/api/review/sample", dependencies=reviewer)
    def review_sample(body: SampleBody | None = None) -> dict[str, Any]:
        """Random done jobs nobody has reviewed yet."""
        n = (body or SampleBody()).n
        if not 1 <= n <= MAX_SAMPLE:
            raise ApiError(
                400, msg("history_bad_param", name="n", value=n, allowed=f"1–{MAX_SAMPLE}"), param="n"
            )
        return {"items": [job_summary(job) for job in sample_for_review(store, n)]}

    @router.get("/api/review/stats")
    def stats() -> dict[str, Any]:
        """Reviewed share and accuracy of done answers with a Wilson 95 % interval (nulls before reviews)."""
        return stats_dict(review_stats(store))

    return router


def _review_error(exc: ReviewRejected, job: Job | None) -> ApiError:
    if exc.reason == "not_done":
        return ApiError(400, msg("review_not_done", status=job.status if job else "?"))
    if exc.reason == "correction_missing":
        return ApiError(400, msg("review_correction_missing"), param="correction")
    return ApiError(
        400, msg("history_bad_param", name="verdict", value=str(exc), allowed=", ".join(ReviewStatus.ALL))
    )
