"""The written reports, for the web UI's Reports tab; everything here is behind the FULL scope.

- GET /api/reports                     every `data_dir/reports/NAME/STAMP/` folder with its files, newest
                                       period first, and each configured report's schedule (next and last run)
- POST /api/reports/generate           write one report now for any days (default: yesterday in
                                       `[http] timezone`), through the same `write_report` as the scheduler
                                       (reviewer role)
- GET /reports/{name}/{stamp}/{file}   one report file

Scheduled runs and `tuwen report` write the same folders, so both are listed. Only what is on disk is
listed: the folder is the truth, whatever the scheduler remembers.

The file route takes three plain names and nothing else: each must be a single path segment that is not
hidden (no `.`/`..`, no leading dot: temporary files start with one) and has no separator once decoded
(`..%2F`); the resolved path must still lie inside the reports folder (a symlink cannot lead out) and be a
regular file of a known type. Anything else is answered 404, the same as a missing file, so nothing about
the disk leaks.

The HTML report is served with its own Content-Security-Policy: it is a self-contained page with inline
styles and `data:` images, and may run no script and fetch nothing. Markdown is shown as plain text; the CSV
is a download.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse
from pydantic import BaseModel

from db.models import Role
from service.http.auth import Scope, require
from service.http.context import HttpContext
from service.http.errors import ApiError
from service.messages import msg
from service.reports.adhoc import (
    ReportUsageError,
    bounds_for,
    check_length,
    choose_reports,
    parse_day,
    yesterday,
)
from service.reports.render import write_report

log = logging.getLogger(f"tuwen.{__name__}")

REPORTS_DIR = "reports"
MAX_LISTED = 500  # folders listed at most (a daily report makes 365 a year); newest first
REPORT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
FILE_TYPES = {  # suffix -> (kind, media type)
    ".html": ("html", "text/html; charset=utf-8"),
    ".md": ("markdown", "text/plain; charset=utf-8"),  # shown in the browser rather than downloaded
    ".csv": ("csv", "text/csv; charset=utf-8"),
    ".png": ("png", "image/png"),
}
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")


def plain_segment(value: str) -> bool:
    """Whether `value` is one visible path segment: not empty, no separator or control, no leading dot."""
    return bool(value) and not value.startswith(".") and not _UNSAFE.search(value)


def report_file(root: Path, name: str, stamp: str, file: str) -> Path | None:
    """The report file `root/name/stamp/file` if it is one we serve; None for anything else."""
    if not all(plain_segment(part) for part in (name, stamp, file)) or Path(file).suffix not in FILE_TYPES:
        return None
    base = root.resolve()
    path = (base / name / stamp / file).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path


def list_reports(root: Path, limit: int = MAX_LISTED) -> list[dict[str, Any]]:
    """Every report folder under `root` with its files, newest period first (then by name)."""
    folders: list[tuple[str, str, Path]] = []
    if root.is_dir():
        for report_dir in root.iterdir():
            if not report_dir.is_dir() or not plain_segment(report_dir.name):
                continue
            for run_dir in report_dir.iterdir():
                if run_dir.is_dir() and plain_segment(run_dir.name):
                    folders.append((run_dir.name, report_dir.name, run_dir))
    folders.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [folder_item(name, stamp, folder) for stamp, name, folder in folders[:limit]]


def folder_item(name: str, stamp: str, folder: Path) -> dict[str, Any]:
    """One report run's folder as the listing shows it: name, period stamp, modified time and its files."""
    files = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and plain_segment(path.name) and path.suffix in FILE_TYPES:
            files.append(
                {
                    "name": path.name,
                    "kind": FILE_TYPES[path.suffix][0],
                    "size": path.stat().st_size,
                    "url": "/reports/" + "/".join(quote(part, safe="") for part in (name, stamp, path.name)),
                }
            )
    modified = datetime.fromtimestamp(folder.stat().st_mtime).astimezone().isoformat(timespec="seconds")
    return {"name": name, "stamp": stamp, "modified": modified, "files": files}


def build_router(ctx: HttpContext) -> APIRouter:
    """The reports listing and file routes, bound to the running service."""
    router = APIRouter(dependencies=[Depends(require(ctx.auth, Scope.FULL))])
    root = ctx.config.storage.data_dir / REPORTS_DIR

    @router.get("/api/reports")
    def reports(limit: int = MAX_LISTED) -> dict[str, Any]:
        """The report folders on disk, the configured schedules with their next and last runs, and what the
        「生成报告」 form offers: the report names and the default period (yesterday in `[http] timezone`)."""
        timezone = ctx.config.http.timezone
        day = yesterday(timezone).isoformat()
        return {
            "items": list_reports(root, max(1, min(limit, MAX_LISTED))),
            "schedules": _schedules(ctx),
            "names": [report.name for report in choose_reports(ctx.config, None)],
            "default_period": {"date_from": day, "date_to": day, "timezone": timezone},
        }

    # Writing a report is more than reading one: a reviewer's (a viewer reads the written ones).
    @router.post(
        "/api/reports/generate", dependencies=[Depends(require(ctx.auth, Scope.FULL, role=Role.REVIEWER))]
    )
    def generate(body: GenerateBody | None = None) -> dict[str, Any]:
        """Write one report now for the given days (yesterday by default), as `tuwen report` would."""
        return {"item": generate_report(ctx, body or GenerateBody())}

    @router.get("/reports/{name}/{stamp}/{file}", include_in_schema=False)
    def report(name: str, stamp: str, file: str) -> FileResponse:
        """One file of one report run (see the module docstring for what is refused)."""
        path = report_file(root, name, stamp, file)
        if path is None:
            raise ApiError(404, msg("api_not_found", what=f"/reports/{name}/{stamp}/{file}"))
        kind, media_type = FILE_TYPES[path.suffix]
        headers = {
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
            "Referrer-Policy": "no-referrer",
        }
        if kind == "html":
            headers["Content-Security-Policy"] = REPORT_CSP
        disposition = "attachment" if kind == "csv" else "inline"
        return FileResponse(
            path,
            media_type=media_type,
            headers=headers,
            filename=path.name,
            content_disposition_type=disposition,
        )

    return router


class GenerateBody(BaseModel):
    """`POST /api/reports/generate`: which report (the first configured one when not given) and its days,
    YYYY-MM-DD, both inclusive, in the report's timezone (each defaults to yesterday in `[http] timezone`)."""

    name: str | None = None
    date_from: str | None = None
    date_to: str | None = None


def generate_report(ctx: HttpContext, body: GenerateBody) -> dict[str, Any]:
    """Write the report through `write_report`, as the scheduler and `tuwen report` do; its listing item."""
    config = ctx.config
    default = yesterday(config.http.timezone)
    try:
        report = choose_reports(config, body.name or None)[0]
        since = parse_day("date_from", body.date_from or None) or default
        until = parse_day("date_to", body.date_to or None) or default
        start, end = bounds_for(report, since, until, datetime.now().astimezone())  # refuses since > until
        check_length(since, until)
    except ReportUsageError as exc:
        raise ApiError(400, exc.message) from exc
    try:
        files = write_report(ctx.store, config, report, start, end)
    except OSError as exc:
        log.error("%s", msg("report_write_failed", name=report.name, reason=exc))
        raise ApiError(500, msg("report_write_failed", name=report.name, reason=exc)) from exc
    log.info("report %s for %s – %s written on request", report.name, since, until)
    return folder_item(report.name, files.folder.name, files.folder)


def _schedules(ctx: HttpContext) -> list[dict[str, Any]]:
    """Each `[[report]]` with its schedule, its next run (while the scheduler runs) and its last run."""
    scheduler = ctx.reports
    next_runs = scheduler.next_run_times() if scheduler is not None else {}
    schedules = []
    for report in ctx.config.report:
        runs = scheduler.state.get(report.name).get("runs", []) if scheduler is not None else []
        upcoming = next_runs.get(report.name)
        tz = ZoneInfo(report.timezone)
        schedules.append(
            {
                "name": report.name,
                "schedule": report.schedule,
                "timezone": report.timezone,
                "period": report.period,
                "next_run": upcoming.astimezone(tz).isoformat() if upcoming else None,
                "last_run": runs[0] if runs else None,
            }
        )
    return schedules
