"""Logging set-up: stderr (journald picks it up), logger names that tell subsystems apart, secrets redacted.

Logger names: `tuwen.vision` (image decoding and preprocessing), `tuwen.generate` (model generation),
`tuwen.service*` (queue, worker, lifecycle), `tuwen.watch` (folders), `tuwen.db`.
"""

from __future__ import annotations

import logging
import os
import sys


class RedactSecrets(logging.Filter):
    """Replace any configured secret value that slips into a log line with `***`."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            if any(secret in text for secret in self.secrets):
                for secret in self.secrets:
                    text = text.replace(secret, "***")
                record.msg, record.args = text, None
        return True


def setup_logging(level: str = "INFO", secrets: list[str] | None = None) -> None:
    """Configure the root logger once for the CLI and `tuwen serve`."""
    # Under systemd, journald adds its own timestamps.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(RedactSecrets(secrets or []))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "watchdog", "alembic", "uvicorn.access", "RapidOCR"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
