"""Writing a report's files: Markdown, HTML, CSV and PNG, atomically, then a copy into `[[report]] folder`.

Where: `data_dir/reports/NAME/STAMP/` unless `out_dir` is given, STAMP being the period as local dates
(`2025-03-04` for one day, `2025-03-01_2025-03-07` for a week, both inclusive: they sort by date). Files are
named `NAME_STAMP.md|.html|.csv|.png`, so copies of many reports can sit side by side in one shared folder.

Each file is written to a temporary name in the same folder and renamed into place, so a reader (the web UI,
a person on the share, the chat delivery) never sees half a file, and a crash leaves the previous version.

The CSV lists every job of the period and scope, done, failed and unfinished, one row each, however many:
it is streamed from the database in batches, never held in memory. It is UTF-8 with a BOM and CRLF rows for
Excel, with formula-safe cells (`service.csvcells`, the one rule every CSV of tuwen follows).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO
from zoneinfo import ZoneInfo

from db.history import JobFilter, iter_jobs
from db.models import Job
from db.store import Store
from service.config import Config, ReportConfig
from service.csvcells import spreadsheet_cell as csv_cell
from service.reports.content import collect, period_conditions, scope_conditions
from service.reports.items import job_link
from service.reports.text import markdown, period_stamp, summary_zh

log = logging.getLogger(f"tuwen.{__name__}")

REPORTS_DIR = "reports"
CSV_COLUMNS = (
    "id",
    "uid",
    "created",
    "finished",
    "source",
    "source_ref",
    "file",
    "question",
    "answer",
    "status",
    "error_code",
    "error",
    "latency_ms",
    "turnaround_s",
    "review_status",
    "correction",
    "reviewed",
    "link",
)
_BOM = "\ufeff"


@dataclass
class ReportFiles:
    """What `write_report` wrote (None for outputs the report does not ask for) and a chat summary."""

    folder: Path
    markdown: Path | None
    html: Path | None
    csv: Path | None
    png: Path | None
    summary_zh: str  # a short Chinese summary for chats (a few lines, with the key numbers)

    @property
    def paths(self) -> list[Path]:
        """Every file written, in a stable order."""
        return [p for p in (self.markdown, self.html, self.csv, self.png) if p is not None]


def report_folder(config: Config, report: ReportConfig, since: datetime, until: datetime) -> Path:
    """The default folder of one report run: `data_dir/reports/NAME/STAMP`."""
    tz = ZoneInfo(report.timezone)
    stamp = period_stamp(since.astimezone(tz), until.astimezone(tz))
    return config.storage.data_dir / REPORTS_DIR / report.name / stamp


def write_report(
    store: Store,
    config: Config,
    report: ReportConfig,
    since: datetime,
    until: datetime,
    *,
    out_dir: Path | None = None,
) -> ReportFiles:
    """Compute the report for `[since, until)` and write the outputs `report.outputs` asks for.

    Writes into `out_dir` when given, else `report_folder(...)`; then copies the files into `report.folder`
    when set (a failed copy is logged, not raised: the report itself is written; use `copy_to_folder` to
    retry). Raises OSError when the report's own folder cannot be written.
    """
    tz = ZoneInfo(report.timezone)
    since, until = since.astimezone(tz), until.astimezone(tz)
    data = collect(store, report, since, until, images=config.images)
    folder = out_dir if out_dir is not None else report_folder(config, report, since, until)
    folder.mkdir(parents=True, exist_ok=True)
    base = f"{report.name}_{period_stamp(since, until)}"
    outputs = set(report.outputs)
    chart: bytes | None = None
    if outputs & {"png", "html"}:
        from service.reports.chart import render_chart

        chart = render_chart(data)
    files = ReportFiles(folder, None, None, None, None, summary_zh(data))
    if "png" in outputs and chart is not None:
        files.png = _write_bytes(folder / f"{base}.png", chart)
    if "markdown" in outputs:
        text = markdown(data, files.png.name if files.png else None)
        files.markdown = _write_bytes(folder / f"{base}.md", text.encode("utf-8"))
    if "html" in outputs:
        from service.reports.html import render_html

        files.html = _write_bytes(folder / f"{base}.html", render_html(data, chart).encode("utf-8"))
    if "csv" in outputs:
        files.csv = _write_stream(
            folder / f"{base}.csv", lambda out: write_csv(store, report, since, until, out)
        )
    log.info("report %s for %s written to %s", report.name, period_stamp(since, until), folder)
    if report.folder is not None:
        try:
            copy_to_folder(files, report.folder)
        except OSError as exc:
            log.warning("report %s: cannot copy into %s: %s", report.name, report.folder, exc)
    return files


def copy_to_folder(files: ReportFiles, target: Path) -> list[Path]:
    """Copy the report's files into `target` (created if needed), each atomically. Raises OSError."""
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in files.paths:
        destination = target / path.name
        tmp = destination.with_name(f".{destination.name}.{secrets.token_hex(4)}.tmp")
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, destination)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        copied.append(destination)
    return copied


def write_csv(store: Store, report: ReportConfig, since: datetime, until: datetime, out: IO[bytes]) -> int:
    """Stream every job of the period and scope to `out` as CSV (BOM, CRLF); returns the number of rows."""
    tz = ZoneInfo(report.timezone)
    base_url = report.base_url.rstrip("/")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    buffer.write(_BOM)
    writer.writerow(CSV_COLUMNS)
    where = [*period_conditions(since, until), *scope_conditions(report)]
    count = 0
    for count, job in enumerate(iter_jobs(store, JobFilter(), where=where), start=1):
        writer.writerow([csv_cell(value) for value in _csv_values(job, tz, base_url)])
        if count % 200 == 0:
            out.write(buffer.getvalue().encode("utf-8"))
            buffer.seek(0)
            buffer.truncate()
    out.write(buffer.getvalue().encode("utf-8"))
    return count


def _csv_values(job: Job, tz: ZoneInfo, base_url: str) -> tuple[object, ...]:
    def local(moment: datetime | None) -> str:
        return moment.astimezone(tz).isoformat(timespec="seconds") if moment else ""

    turnaround = (
        f"{(job.finished_at - job.created_at).total_seconds():.3f}"
        if job.finished_at and job.created_at
        else ""
    )
    return (
        job.id,
        job.uid,
        local(job.created_at),
        local(job.finished_at),
        job.source,
        job.source_ref,
        job.file_path,
        job.question,
        job.answer,
        job.status,
        job.error_code,
        job.error,
        f"{job.latency_ms:.0f}" if job.latency_ms is not None else "",
        turnaround,
        job.review_status,
        job.correction,
        local(job.reviewed_at),
        job_link(base_url, job.id) or "",
    )


def _write_bytes(path: Path, data: bytes) -> Path:
    return _write_stream(path, lambda out: out.write(data))


def _write_stream(path: Path, produce: Callable[[IO[bytes]], object]) -> Path:
    """Write `path` through a temporary file in the same folder, fsync it, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("wb") as out:
            produce(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path
