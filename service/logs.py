"""Logging set-up: stderr (journald picks it up), logger names that tell subsystems apart, secrets redacted.

Logger names follow the modules (`tuwen.` + the module's import path: `tuwen.service.worker`,
`tuwen.watchers.folder`, `tuwen.bots.telegram`, `tuwen.db.store`, `tuwen.service.http.openai_api`, …), with
two names kept for what people filter on: `tuwen.vision` (image decoding, PDF pages, OCR reading) and
`tuwen.generate` (model generation in the transformers and openai backends).

Every line logged while a job is in hand carries `[job abcd1234]`: the worker sets the job in a context
variable (`job_context`) and the formatter adds it, so no log call has to paste the id itself. Whole records,
tracebacks included, pass through `service.redact.scrub`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

from service import redact

_JOB: ContextVar[str] = ContextVar("tuwen_job", default="")


@contextlib.contextmanager
def job_context(*uids: str) -> Iterator[None]:
    """Tag every log line of this thread (or task) with the job ids, until the block ends."""
    token = _JOB.set(" ".join(uid[:8] for uid in uids))
    try:
        yield
    finally:
        _JOB.reset(token)


def current_job() -> str:
    """The short id(s) set by `job_context`, or ""."""
    return _JOB.get()


class TuwenFormatter(logging.Formatter):
    """Adds `[job …]` to lines logged inside `job_context` and scrubs secrets from the whole record."""

    def format(self, record: logging.LogRecord) -> str:
        job = getattr(record, "tuwen_job", None)
        if job is None:
            job = _JOB.get()
        text = super().format(record)
        if job and "[job " not in record.getMessage():
            prefix = f"{record.name}: "
            text = text.replace(prefix, f"{prefix}[job {job}] ", 1)
        return redact.scrub(text)


class _CaptureJob(logging.Filter):
    """Remember the job of the logging thread on the record (formatting may happen elsewhere)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "tuwen_job"):
            record.tuwen_job = _JOB.get()
        return True


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to `sys.stderr` as it is when a record comes, not as it was at setup.

    A stream swapped after setup (a test's capture, a redirect) may be closed by the time a worker thread
    logs: writing to the old object failed with "I/O operation on closed file" and lost the line.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(level: str = "INFO", secrets: Iterable[str] | None = None) -> None:
    """Configure the root logger once for the CLI and `tuwen serve`."""
    redact.register(secrets or [])
    # Under systemd, journald adds its own timestamps.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    handler = _CurrentStderr()
    handler.setFormatter(TuwenFormatter(fmt))
    handler.addFilter(_CaptureJob())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "watchdog", "alembic", "uvicorn.access", "RapidOCR"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class RedactSecrets(logging.Filter):
    """For handlers tuwen does not own (a library's own, non-propagating loggers): scrub their records too."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        redact.register(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        cleaned = redact.scrub(text)
        if cleaned != text:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact.scrub(record.exc_text)
        return True
