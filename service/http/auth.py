"""Who may call what. One `[http] api_key` protects everything but `/health`.

- Programs send it as `Authorization: Bearer KEY` (compared in constant time).
- People type it once on /login and get a session cookie holding a token derived from the key.
- A kiosk tablet or a feed screen gets its own derived token in its URL (`/kiosk?token=…`), which opens only
  that page and what it needs (asking a question, or the live feed), never the history. Derived tokens change
  when the key changes, so rotating the key locks out every screen and session at once.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum

from fastapi import Request

SESSION_COOKIE = "tuwen_session"


class Scope(StrEnum):
    """What a credential opens."""

    FULL = "full"
    KIOSK = "kiosk"
    FEED = "feed"


class Auth:
    """Checks credentials against the configured key; everything is open when no key is set."""

    def __init__(self, api_key: str) -> None:
        self._key = api_key

    @property
    def enabled(self) -> bool:
        """Whether a key is configured."""
        return bool(self._key)

    def token(self, scope: Scope | str) -> str:
        """A token derived from the key for a scope or label ('' when no key is set).

        FULL access is the key itself (or the session cookie); derived KIOSK/FEED tokens open only their page.
        """
        if not self._key:
            return ""
        label = scope.value if isinstance(scope, Scope) else str(scope)
        return hmac.new(self._key.encode(), f"tuwen-{label}".encode(), hashlib.sha256).hexdigest()[:40]

    def session_value(self) -> str:
        """The session cookie's value for a person who typed the key."""
        return self.token("session") if self._key else ""

    def scopes_of(self, request: Request) -> set[Scope]:
        """Every scope the request's credentials open."""
        if not self._key:
            return set(Scope)
        presented: list[str] = []
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            presented.append(header[7:].strip())
        if cookie := request.cookies.get(SESSION_COOKIE):
            presented.append(cookie)
        if token := request.query_params.get("token"):
            presented.append(token)
        scopes: set[Scope] = set()
        for value in presented:
            if _same(value, self._key) or _same(value, self.session_value()):
                return set(Scope)
            if _same(value, self.token(Scope.KIOSK)):
                scopes.add(Scope.KIOSK)
            if _same(value, self.token(Scope.FEED)):
                scopes.add(Scope.FEED)
        return scopes

    def allows(self, request: Request, *scopes: Scope) -> bool:
        """Whether the request may use something open to any of `scopes` (FULL always may)."""
        granted = self.scopes_of(request)
        return Scope.FULL in granted or any(scope in granted for scope in scopes)


def _same(given: str, expected: str) -> bool:
    # Constant-time, and never equal to an empty expectation.
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def require(auth: Auth, *scopes: Scope):  # type: ignore[no-untyped-def]
    """A FastAPI dependency: 401 in OpenAI's error shape unless the request opens one of `scopes`."""
    from service.http.errors import ApiError
    from service.messages import msg

    def dependency(request: Request) -> None:
        if not auth.allows(request, *scopes):
            raise ApiError(401, msg("api_unauthorized"), headers={"WWW-Authenticate": "Bearer"})

    return dependency
