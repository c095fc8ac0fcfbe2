"""An optional per-watch CSV catalogue (`tuwen-catalogue.csv`): one row per answered or failed scan.

Staff open it in Excel, so it is UTF-8 with a byte-order mark (written once, when the file is created;
without it Excel guesses a legacy code page and Chinese turns to mojibake) and CRLF row endings.

Appends are safe against each other and against crashes:
- a process-wide lock serialises threads, and `fcntl.flock` serialises processes (a second tuwen, a script);
  the header decision is made under both locks, so exactly one appender writes BOM + header;
- each row is encoded completely first and handed to the kernel in one `write` on an `O_APPEND` descriptor,
  then fsynced, so a crash can at worst leave the *last* row torn and never touches earlier rows; if the
  file does not end in a newline (a torn row), the next append starts on a fresh line.

Cells that Excel would run as formulas (`=`, `+`, `-`, `@`, tab, CR at the start; model output and file
names are untrusted) get a leading apostrophe, the OWASP "CSV injection" defence. Characters XML 1.0 and
Excel cannot show (NUL and other C0 controls except tab/LF/CR) are dropped.
"""

from __future__ import annotations

import csv
import fcntl
import io
import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from service.csvcells import spreadsheet_cell
from service.sidecars.sidecar import SidecarRecord, clean_xml_text

logger = logging.getLogger(f"tuwen.{__name__}")

CATALOGUE_NAME = "tuwen-catalogue.csv"
COLUMNS: tuple[str, ...] = ("file", "time", "status", "question", "answer", "ocr_text", "error", "correction")
_BOM = "\ufeff".encode()
# One lock for every catalogue: appends are a few milliseconds, so per-path locks would buy nothing.
_LOCK = threading.Lock()


@dataclass(frozen=True)
class CatalogueRow:
    """One catalogue line; `file` is the scan's name or its path relative to the watched folder.

    `time` may be a datetime (written as ISO 8601 to the second) or text the caller already formatted.
    """

    file: str
    time: datetime | str
    status: str
    question: str
    answer: str | None = None
    ocr_text: str | None = None
    error: str | None = None
    correction: str | None = None

    @classmethod
    def from_record(cls, record: SidecarRecord, file: str | None = None) -> CatalogueRow:
        """The row for a sidecar record; pass `file` to record a relative path instead of the base name."""
        return cls(
            file=file if file is not None else record.file_name,
            time=record.created_at,
            status=record.status,
            question=record.question,
            answer=record.answer,
            ocr_text=record.ocr_text,
            error=record.error,
            correction=record.correction,
        )

    def cells(self) -> list[str]:
        """The row's cells in `COLUMNS` order, made safe for Excel."""
        values = (
            self.file,
            self.time if isinstance(self.time, str) else self.time.isoformat(timespec="seconds"),
            self.status,
            self.question,
            self.answer,
            self.ocr_text,
            self.error,
            self.correction,
        )
        return [_safe_cell(value) for value in values]


def append_catalogue_row(csv_path: Path, row: CatalogueRow) -> None:
    """Append `row` to the catalogue at `csv_path`, creating it (BOM + header) if needed.

    Safe with concurrent appenders in this process and in others; durable once it returns.
    """
    encoded = _encode([row.cells()])
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK:
        fd = os.open(csv_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size == 0:
                # A file another appender created and then crashed on before the header is still "new".
                encoded = _BOM + _encode([list(COLUMNS)]) + encoded
            elif os.pread(fd, 1, size - 1) != b"\n":
                logger.warning(
                    "catalogue %s ended mid-row (an earlier crash?); starting a new line", csv_path
                )
                encoded = b"\r\n" + encoded
            _write_all(fd, encoded)
            os.fsync(fd)
        finally:
            os.close(fd)  # closing also releases the flock


def read_catalogue(csv_path: Path) -> list[dict[str, str]]:
    """All rows as dicts keyed by column name (for tests, reports and the web UI)."""
    with csv_path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def _safe_cell(value: str | None) -> str:
    # XML-safe first (the same text goes into the XMP), then the shared spreadsheet rule.
    return spreadsheet_cell(clean_xml_text(value or ""))


def _encode(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    # QUOTE_MINIMAL quotes any cell with a comma, quote or newline, which is what Excel and csv.reader expect.
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _write_all(fd: int, data: bytes) -> None:
    """One write call in practice; loop only because POSIX allows a regular-file write to be short."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
