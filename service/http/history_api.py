"""History and review JSON API (docs/http-contract.md, "History and review"), all behind the FULL scope.

- GET  /api/jobs                  search + filters + paging (db.history.search_jobs)
- GET  /api/jobs/export.csv       the filtered set as an Excel-friendly CSV (service.http.history_csv)
- GET  /api/jobs/{id}             one job, with its conversation, OCR lines, pages and sidecars
- GET  /api/jobs/{id}/pages/{n}   page n as a JPEG in the pixels of its OCR boxes (service.http.job_pages)
- GET  /api/jobs/{id}/thumbnail   JPEG, long edge <= 256 px (service.thumbnails)
- POST /api/jobs/{id}/review      a verdict (and correction); folder jobs get their sidecars rewritten
- POST /api/review/sample         random unreviewed done jobs
- GET  /api/review/stats          accuracy of reviewed answers with a Wilson 95 % interval

Query values are taken as text and checked here, so a bad date or page size is answered with a catalogue
message in both languages rather than a validation dump. Empty values (`status=` from a web form) mean
"no filter". Handlers are plain `def`s: FastAPI runs them in its thread pool, where blocking SQLite reads
and image decoding belong.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Response
from fastapi.responses import StreamingResponse

from db.history import (
    MAX_PER_PAGE,
    REVIEW_FILTERS,
    STATUSES,
    JobFilter,
    iter_jobs,
    search_jobs,
)
from db.models import Job, ReviewStatus
from service.http.auth import Scope, require
from service.http.context import HttpContext
from service.http.errors import ApiError
from service.http.history_csv import LANGUAGES, csv_chunks
from service.http.job_pages import detail_fields, page_jpeg
from service.messages import msg, render
from service.thumbnails import thumbnail_bytes


def job_summary(job: Job) -> dict[str, Any]:
    """The contract's JobSummary for one job (also what the review endpoint answers)."""
    return {
        "id": job.id,
        "uid": job.uid,
        "created_at": _iso(job.created_at),
        "finished_at": _iso(job.finished_at),
        "source": job.source,
        "source_ref": job.source_ref,
        "status": job.status,
        "file_name": Path(job.file_path).name if job.file_path else None,
        "file_path": job.file_path,
        "question": job.question,
        "answer": job.answer,
        "answer_kind": job.answer_kind,
        "ocr_text": job.ocr_text,
        "needs_review": bool(job.needs_review),
        "rotation": job.rotation or 0,
        "notes": [str(render(str(n.get("code")), n.get("params"))) for n in job.notes or ()],
        "error": job.error,
        "review_status": job.review_status or ReviewStatus.UNREVIEWED,
        "correction": job.correction,
        "reviewed_by": job.reviewed_by,
        "conversation_id": job.conversation_id,
        "thumbnail_url": f"/api/jobs/{job.id}/thumbnail" if job.images else None,
        "model": job.model,
        "latency_ms": job.latency_ms,
    }


def job_filter_params(
    q: str = "",
    source: str = "",
    watch: str = "",
    status: str = "",
    date_from: str = "",
    date_to: str = "",
    review: str = "",
) -> JobFilter:
    """The filters shared by the list and the export, checked (a FastAPI dependency)."""
    check_choice("status", status, STATUSES)
    check_choice("review", review, REVIEW_FILTERS)
    return JobFilter(
        q=q.strip(),
        source=source or None,
        watch=watch or None,
        status=status or None,
        date_from=_parse_date("date_from", date_from),
        date_to=_parse_date("date_to", date_to),
        review=review or None,
    )


def build_router(ctx: HttpContext) -> APIRouter:
    """The history and review routes, bound to the running service."""
    router = APIRouter(dependencies=[Depends(require(ctx.auth, Scope.FULL))])
    store = ctx.store

    def get_job(job_id: int) -> Job:
        job = store.get(job_id)
        if job is None:
            raise ApiError(404, msg("api_not_found", what=f"job {job_id}"))
        return job

    @router.get("/api/jobs")
    def list_jobs(
        job_filter: JobFilter = Depends(job_filter_params),  # noqa: B008 - FastAPI's dependency idiom
        page: str = "1",
        per_page: str = "50",
    ) -> dict[str, Any]:
        """Jobs matching the filters, newest first, one page at a time."""
        page_number = parse_int("page", page, 1, 1_000_000)
        size = parse_int("per_page", per_page, 1, MAX_PER_PAGE)
        f = job_filter
        found = search_jobs(
            store, f.q, f.source, f.watch, f.status, f.date_from, f.date_to, f.review, page_number, size
        )
        return {
            "items": [job_summary(job) for job in found.items],
            "total": found.total,
            "page": found.page,
            "per_page": found.per_page,
        }

    # Declared before /api/jobs/{id}: the int convertor would not match it anyway, but order makes it plain.
    @router.get("/api/jobs/export.csv")
    def export_csv(
        job_filter: JobFilter = Depends(job_filter_params),  # noqa: B008 - FastAPI's dependency idiom
        lang: str = "",
    ) -> StreamingResponse:
        """The filtered set as CSV for Excel (service.http.history_csv); headers in Chinese, or `lang=en`."""
        check_choice("lang", lang, LANGUAGES)
        timezone = ctx.config.http.timezone
        stamp = datetime.now(ZoneInfo(timezone)).strftime("%Y%m%d-%H%M%S")
        return StreamingResponse(
            csv_chunks(iter_jobs(store, job_filter), lang or "zh", timezone),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="tuwen-jobs-{stamp}.csv"'},
        )

    @router.get("/api/jobs/{job_id:int}")
    def job_detail(job_id: int) -> dict[str, Any]:
        """One job with its conversation, OCR lines, page images and sidecars (service.http.job_pages)."""
        job = get_job(job_id)
        return {**job_summary(job), **detail_fields(job, ctx.config)}

    @router.get("/api/jobs/{job_id:int}/pages/{number:int}")
    def job_page(job_id: int, number: int) -> Response:
        """Page `number` (1-based) as a JPEG in the pixels its OCR boxes use; 404 when gone or undecodable."""
        job = get_job(job_id)
        data = page_jpeg(job, number, ctx.config.storage.data_dir, ctx.config.images)
        if data is None:
            raise ApiError(404, msg("api_not_found", what=f"page {number} of job {job_id}"))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    @router.get("/api/jobs/{job_id:int}/thumbnail")
    def job_thumbnail(job_id: int) -> Response:
        """A small JPEG of the job's first image; 404 when the image is gone or undecodable."""
        job = get_job(job_id)
        data = thumbnail_bytes(job, ctx.config.storage.data_dir, ctx.config.images)
        if data is None:
            raise ApiError(404, msg("api_not_found", what=f"thumbnail of job {job_id}"))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    return router


# -- helpers ----------------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def check_choice(name: str, value: str, allowed: tuple[str, ...], *, required: bool = False) -> None:
    if (value or required) and value not in allowed:
        raise ApiError(
            400, msg("history_bad_param", name=name, value=value, allowed=", ".join(allowed)), param=name
        )


def _parse_date(name: str, value: str) -> date | None:
    if not value:
        return None
    try:
        # fromisoformat alone would also take "20250301" and week dates; the contract says YYYY-MM-DD.
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise ApiError(400, msg("history_bad_date", name=name, value=value), param=name) from None


def parse_int(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise ApiError(
            400, msg("history_bad_param", name=name, value=value, allowed=f"{low}–{high}"), param=name
        )
    return number
