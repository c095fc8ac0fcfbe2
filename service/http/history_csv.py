"""The history as a CSV file for Excel (`GET /api/jobs/export.csv`): what staff open on their desks.

- UTF-8 with a BOM (Excel reads BOM-less UTF-8 as the local code page) and CRLF rows.
- Headers in Chinese by default, in English with `?lang=en`; the time columns name their zone.
- Times in the institution's zone (`[http] timezone`) as `YYYY-MM-DD HH:MM:SS`: no `T`, no offset, so Excel
  takes the cell for a date it can sort and filter, which it does not for ISO 8601 with an offset.
- Errors in the chosen language, rendered from the stored code and parameters (the stored text otherwise).
- Every cell through `service.csvcells.spreadsheet_cell`, the one formula-injection rule of every CSV.

Rows are streamed in batches from `db.history.iter_jobs`, never the whole history in memory.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

from db.models import Job
from service.csvcells import spreadsheet_cell
from service.messages import msg, render

LANGUAGES = ("zh", "en")
# (catalogue code of the header, whether it is a time column whose header names the zone)
COLUMNS: tuple[tuple[str, bool], ...] = (
    ("export_col_id", False),
    ("export_col_created", True),
    ("export_col_finished", True),
    ("export_col_source", False),
    ("export_col_source_ref", False),
    ("export_col_file", False),
    ("export_col_question", False),
    ("export_col_answer", False),
    ("export_col_ocr_text", False),
    ("export_col_status", False),
    ("export_col_error", False),
    ("export_col_review_status", False),
    ("export_col_correction", False),
    ("export_col_reviewed_by", False),
    ("export_col_reviewed_at", True),
)
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_BOM = "\ufeff"
_BATCH_ROWS = 200


def header(lang: str, timezone: str) -> list[str]:
    """The header row in `lang` ("zh" or "en"); time columns carry the zone's name."""
    return [
        msg(code, timezone=timezone).text(lang) if timed else msg(code).text(lang) for code, timed in COLUMNS
    ]


def local_time(moment: datetime | None, tz: ZoneInfo) -> str:
    """`moment` in `tz` as `YYYY-MM-DD HH:MM:SS` (what Excel reads as a date); "" when unknown."""
    return moment.astimezone(tz).strftime(TIME_FORMAT) if moment is not None else ""


def csv_chunks(jobs: Iterator[Job], lang: str, timezone: str) -> Iterator[bytes]:
    """BOM + header, then the rows in chunks of encoded CSV."""
    tz = ZoneInfo(timezone)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    buffer.write(_BOM)
    writer.writerow(header(lang, timezone))
    for rows, job in enumerate(jobs, start=1):
        writer.writerow([spreadsheet_cell(value) for value in _values(job, lang, tz)])
        if rows % _BATCH_ROWS == 0:
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode("utf-8")


def _values(job: Job, lang: str, tz: ZoneInfo) -> tuple[object, ...]:
    error = render(job.error_code, job.error_params, job.error).text(lang) if job.error else ""
    return (
        job.id,
        local_time(job.created_at, tz),
        local_time(job.finished_at, tz),
        job.source,
        job.source_ref,
        job.file_path,
        job.question,
        job.answer,
        job.ocr_text,
        job.status,
        error,
        job.review_status,
        job.correction,
        job.reviewed_by,
        local_time(job.reviewed_at, tz),
    )
