"""One redactor for every secret tuwen knows: API keys, bot tokens, WeCom secrets, access tokens.

A secret must never leave the process: not in a log line or its traceback, not in an error stored with a
job, shown in `/health`, returned to a client, exported or reported. Upstream servers echo keys back in
their error text more often than one would think (a URL with a token in it, a "key sk-… is invalid"), so
scrubbing happens where text is *made* rather than where it is shown: every catalogue message scrubs the
values filled into it (`service.messages.Message.format`), and the log formatter scrubs whole records,
tracebacks included. Configured secrets are registered once at start (`register`); adapters add the
secrets they learn while running (a WeCom access token).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

MASK = "***"
# Shorter values would blank ordinary words out of every log line.
MIN_SECRET_CHARS = 4

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def register(secrets: Iterable[str]) -> None:
    """Add secrets to scrub everywhere (empty and very short values are ignored)."""
    global _secrets
    with _lock:
        known = set(_secrets)
        known.update(s.strip() for s in secrets if s and len(s.strip()) >= MIN_SECRET_CHARS)
        # Longest first: a secret that contains another is masked whole.
        _secrets = tuple(sorted(known, key=len, reverse=True))


def scrub(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    secrets = _secrets
    if not secrets or not text:
        return text
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def registered() -> tuple[str, ...]:
    """The secrets registered so far (for a child process that must scrub the same ones)."""
    return _secrets
