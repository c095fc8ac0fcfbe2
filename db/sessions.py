"""Login sessions kept server-side, in the `sessions` table, so that logout and expiry really end them.

The browser holds only a random value; the row is keyed by its SHA-256, so a copy of the database (a backup,
a support bundle) holds no cookie anyone could replay. Each row also carries the session's CSRF token, who
logged in (`user`) and with which `role`, so a later change (named accounts, revoking one person) needs no
new table. Expired rows are deleted lazily: when one is presented again, and all of them whenever someone
logs in, so the table never grows past the sessions of the last `session_hours`.

Writes go through the store's single writer; `last_seen_at` is refreshed at most once a minute per session
so browsing the history does not turn every page view into a write.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import delete

from db.models import LoginSession, utcnow
from db.store import Store

TOKEN_BYTES = 32
MAX_COOKIE_CHARS = 128  # a longer value cannot be ours: refuse it before hashing or touching the database
TOUCH_EVERY = timedelta(minutes=1)


def session_id(cookie_value: str) -> str:
    """The row id of a cookie value: its SHA-256 in hex."""
    return hashlib.sha256(cookie_value.encode()).hexdigest()


class SessionStore:
    """Create, find and end login sessions."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def create(self, *, user: str, role: str, address: str, lifetime: timedelta) -> tuple[str, LoginSession]:
        """A new session; returns the cookie value (shown to the browser once, never stored) and the row."""
        cookie_value = secrets.token_urlsafe(TOKEN_BYTES)
        now = utcnow()
        row = LoginSession(
            id=session_id(cookie_value),
            user=user,
            role=role,
            csrf_token=secrets.token_hex(TOKEN_BYTES),
            address=address[:64],
            created_at=now,
            expires_at=now + lifetime,
            last_seen_at=now,
        )
        with self._store.write_session() as session:
            session.execute(delete(LoginSession).where(LoginSession.expires_at <= now))
            session.add(row)
        return cookie_value, row

    def find(self, cookie_value: str) -> LoginSession | None:
        """The live session behind a cookie value; None when unknown or expired (expired rows are deleted)."""
        if not cookie_value or len(cookie_value) > MAX_COOKIE_CHARS:
            return None
        key = session_id(cookie_value)
        with self._store.read_session() as session:
            row = session.get(LoginSession, key)
        if row is None:
            return None
        now = utcnow()
        if row.expires_at <= now:
            self.delete(key)
            return None
        if now - row.last_seen_at >= TOUCH_EVERY:
            with self._store.write_session() as session:
                stored = session.get(LoginSession, key)
                if stored is not None:
                    stored.last_seen_at = now
            row.last_seen_at = now
        return row

    def delete(self, key: str) -> None:
        """End one session by its row id (logout, or a session the current key no longer vouches for)."""
        with self._store.write_session() as session:
            session.execute(delete(LoginSession).where(LoginSession.id == key))
