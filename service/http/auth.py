"""Who may call what. One `[http] api_key` and, beside it, named staff accounts with roles.

- Programs send the key as `Authorization: Bearer KEY` (compared in constant time), and only there: a key in
  a URL ends up in proxy logs, browser history and Referer headers, so `?token=KEY` opens nothing. The key
  is an admin.
- People log in on /login with a name and password (`db/users.py`, `service/passwords.py`), or with the
  key alone in a single-person setup, and get a session: a random value in an HttpOnly cookie, its SHA-256
  and a CSRF token in the `sessions` table (`db/sessions.py`). Logout deletes the row; so does expiry after
  `[http] session_hours`. A key session's `user` is `key:<fingerprint of the key>`, so rotating the key ends
  every key session at once; an account's sessions carry its name and role and end when its password or
  role changes or it is removed (in the same transaction, `db/users.py`).
- Roles (`db.models.Role`): a viewer reads (history, search, export, reports, progress), a reviewer also
  reviews and corrects, an admin also re-runs, pauses and resumes the backlog, manages accounts and reads
  the audit log. `require(auth, Scope.FULL, role=…)` enforces it on every route; the pages only hide what a
  role cannot use (`<body data-role>`), they are not the check.
- A kiosk tablet or a feed screen gets its own token derived from the key (`/kiosk?token=…`, or the same
  value as a Bearer header), which opens only that page and what it needs (asking a question, or the live
  feed), never the history. Derived tokens change when the key changes.
- Everything is open when there is neither a key nor an account (a single-person setup on one machine).

A cookie travels with every request the browser makes to us, including ones another site's page triggers, so
a state-changing request (POST/PUT/PATCH/DELETE) that only the cookie authenticates must also show it comes
from our own pages: an `Origin` equal to our own origin, or the session's token in `X-CSRF-Token`; and it must
be JSON, which a cross-site form cannot send. Requests whose Authorization header (or kiosk/feed token) is
enough on its own are unaffected: no browser attaches those to a cross-site request.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from fastapi import Request

from db.models import Role
from service import passwords
from service.messages import Message, msg

if TYPE_CHECKING:
    from db.models import LoginSession, User
    from db.sessions import SessionStore
    from db.users import UserStore

SESSION_COOKIE = "tuwen_session"
CSRF_HEADER = "x-csrf-token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
KEY_USER_PREFIX = "key:"  # sessions opened with the single key; named accounts get plain user names
KEY_ROLE = Role.ADMIN
KEY_ACTOR = "api-key"  # who the key is in the audit log and `reviewed_by`
ANONYMOUS = "anonymous"  # who acts when neither a key nor an account is set up
ACCOUNTS_RECHECK_SECONDS = 2.0  # how long "are there accounts?" is remembered (`tuwen users add` elsewhere)
_STATE = "tuwen_credentials"  # where one request's checked credentials are kept (request.state)


class Scope(StrEnum):
    """What a credential opens."""

    FULL = "full"
    KIOSK = "kiosk"
    FEED = "feed"


@dataclass(frozen=True)
class Credentials:
    """What one request presented, checked once: scopes opened without the cookie, and the live session."""

    scopes: frozenset[Scope]
    session: LoginSession | None

    def allows_without_cookie(self, *scopes: Scope) -> bool:
        """Whether the Authorization header or a kiosk/feed token alone opens one of `scopes`."""
        return Scope.FULL in self.scopes or any(scope in self.scopes for scope in scopes)


@dataclass(frozen=True)
class Actor:
    """Who a request acts as: an account name, `api-key` or `anonymous`, and the role that gives them."""

    name: str
    role: Role

    @property
    def reviewer(self) -> str | None:
        """What `jobs.reviewed_by` records for this actor (nothing when nobody is known)."""
        return None if self.name == ANONYMOUS else self.name


class Auth:
    """Checks credentials against the configured key and the accounts; open when there is neither."""

    def __init__(
        self,
        api_key: str,
        sessions: SessionStore | None = None,
        *,
        session_hours: float = 12,
        users: UserStore | None = None,
    ) -> None:
        self._key = api_key
        self._sessions = sessions
        self.users = users
        self.session_lifetime = timedelta(hours=session_hours)
        self._accounts_seen = (-ACCOUNTS_RECHECK_SECONDS, False)

    @property
    def enabled(self) -> bool:
        """Whether anything must be shown to get in: a key is configured or an account exists."""
        return bool(self._key) or self.accounts_exist()

    @property
    def key_set(self) -> bool:
        """Whether `[http] api_key` is configured."""
        return bool(self._key)

    def accounts_exist(self) -> bool:
        """Whether any account exists (remembered for a moment: this is asked on every request)."""
        if self.users is None:
            return False
        checked_at, exists = self._accounts_seen
        now = time.monotonic()
        if now - checked_at >= ACCOUNTS_RECHECK_SECONDS:
            exists = self.users.any()
            self._accounts_seen = (now, exists)
        return exists

    def accounts_changed(self) -> None:
        """Forget the remembered answer of `accounts_exist` (an account was added or removed here)."""
        self._accounts_seen = (-ACCOUNTS_RECHECK_SECONDS, False)

    def token(self, scope: Scope | str) -> str:
        """A token derived from the key for a scope or label ('' when no key is set).

        FULL access is the key itself (or a session); derived KIOSK/FEED tokens open only their page.
        """
        if not self._key:
            return ""
        label = scope.value if isinstance(scope, Scope) else str(scope)
        return hmac.new(self._key.encode(), f"tuwen-{label}".encode(), hashlib.sha256).hexdigest()[:40]

    def key_user(self) -> str:
        """The `user` of sessions opened with the current key: a short fingerprint, never the key."""
        return KEY_USER_PREFIX + self.token("session-user")[:16]

    def is_key(self, typed: str) -> bool:
        """Whether `typed` is the key (constant time)."""
        return _same(typed, self._key)

    # -- sessions --------------------------------------------------------------------------------------

    def check_account(self, name: str, password: str) -> User | None:
        """The account `name` when `password` is its password, else None (the same time either way).

        A hash made with older scrypt parameters is replaced by one with the current ones.
        """
        user = self.users.get(name) if self.users is not None and name else None
        if user is None:
            passwords.verify_dummy(password)
            return None
        if not passwords.verify_password(password, user.password_hash):
            return None
        if passwords.needs_rehash(user.password_hash) and self.users is not None:
            self.users.set_password(user.name, passwords.hash_password(password), end_sessions=False)
        return user

    def start_session(self, address: str, user: User | None = None) -> str:
        """Open a session for `user`, or for someone who typed the key; returns the cookie value."""
        if self._sessions is None:
            raise RuntimeError("this Auth has no session store")
        name, role = (user.name, user.role) if user is not None else (self.key_user(), KEY_ROLE)
        value, _ = self._sessions.create(
            user=name, role=role, address=address, lifetime=self.session_lifetime
        )
        if user is not None and self.users is not None:
            self.users.logged_in(user.name)
        return value

    def end_session(self, session: LoginSession) -> None:
        """Delete a session's row: its cookie opens nothing from now on."""
        if self._sessions is not None:
            self._sessions.delete(session.id)

    def session_of(self, request: Request) -> LoginSession | None:
        """The live session the request's cookie names, if any."""
        return self.credentials(request).session

    def _find_session(self, cookie_value: str) -> LoginSession | None:
        if self._sessions is None or not cookie_value:
            return None
        session = self._sessions.find(cookie_value)
        if session is None:
            return None
        if (session.user or "").startswith(KEY_USER_PREFIX):
            if self._key and session.user == self.key_user():
                return session
            # Opened with an earlier key (or before the key was removed): it vouches for nothing now.
            self._sessions.delete(session.id)
            return None
        # An account's session: account changes delete its rows, so a row that is here is still good.
        return session if self.users is not None else None

    # -- checking a request ------------------------------------------------------------------------------

    def credentials(self, request: Request) -> Credentials:
        """The request's credentials, checked once per request (the result is kept on `request.state`)."""
        cached = getattr(request.state, _STATE, None)
        if isinstance(cached, Credentials):
            return cached
        scopes: set[Scope] = set()
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            scopes |= self._scopes_of_token(header[7:].strip(), key_allowed=True)
        if token := request.query_params.get("token"):
            scopes |= self._scopes_of_token(token, key_allowed=False)
        session = None
        if Scope.FULL not in scopes:
            session = self._find_session(request.cookies.get(SESSION_COOKIE, ""))
        credentials = Credentials(frozenset(scopes), session)
        setattr(request.state, _STATE, credentials)
        return credentials

    def _scopes_of_token(self, value: str, *, key_allowed: bool) -> set[Scope]:
        if key_allowed and _same(value, self._key):
            return set(Scope)
        scopes = set()
        if _same(value, self.token(Scope.KIOSK)):
            scopes.add(Scope.KIOSK)
        if _same(value, self.token(Scope.FEED)):
            scopes.add(Scope.FEED)
        return scopes

    def scopes_of(self, request: Request) -> set[Scope]:
        """Every scope the request's credentials open (a session opens them all)."""
        if not self.enabled:
            return set(Scope)
        credentials = self.credentials(request)
        return set(Scope) if credentials.session is not None else set(credentials.scopes)

    def allows(self, request: Request, *scopes: Scope) -> bool:
        """Whether the request may use something open to any of `scopes` (FULL always may)."""
        granted = self.scopes_of(request)
        return Scope.FULL in granted or any(scope in granted for scope in scopes)

    def refusal(
        self, request: Request, *scopes: Scope, role: Role = Role.VIEWER
    ) -> tuple[int, Message] | None:
        """Why the request may not use something open to `scopes` and `role`: (401 | 403, message), or None.

        The key (a Bearer header) is an admin; a kiosk or feed token opens only its scopes; a session opens
        every scope, with what its role allows.
        """
        if not self.enabled:
            return None
        credentials = self.credentials(request)
        if credentials.allows_without_cookie(*scopes):
            return None
        session = credentials.session
        if session is None:
            return 401, msg("api_unauthorized")
        if request.method in UNSAFE_METHODS:
            forged = forgery(request, session, json_only=True)
            if forged is not None:
                return 403, forged
        if not role_of(session.role).allows(role):
            return 403, msg("api_role_refused", role=role.value, have=role_of(session.role).value)
        return None

    def actor(self, request: Request) -> Actor:
        """Who the request acts as, for the audit log and `reviewed_by`."""
        if not self.enabled:
            return Actor(ANONYMOUS, Role.ADMIN)
        credentials = self.credentials(request)
        if Scope.FULL in credentials.scopes:
            return Actor(KEY_ACTOR, KEY_ROLE)
        session = credentials.session
        if session is None:
            return Actor(ANONYMOUS, Role.VIEWER)
        if (session.user or "").startswith(KEY_USER_PREFIX):
            return Actor(KEY_ACTOR, role_of(session.role))
        return Actor(session.user or ANONYMOUS, role_of(session.role))

    def page_attrs(self, request: Request) -> dict[str, str]:
        """What a page opened by this request carries on `<body>`: the session's CSRF token and the role."""
        session = self.session_of(request) if self.enabled else None
        attrs = {"role": self.actor(request).role.value}
        if session is not None:
            attrs["csrf"] = session.csrf_token
        return attrs


def role_of(value: str | None) -> Role:
    """A stored role as a Role; anything unknown is the least one (a viewer)."""
    try:
        return Role(value or "")
    except ValueError:
        return Role.VIEWER


def forgery(
    request: Request, session: LoginSession, *, json_only: bool, form_token: str = ""
) -> Message | None:
    """Why a cookie-authenticated state change may come from another site's page, or None when it cannot.

    It must carry our own `Origin` or the session's CSRF token (in `X-CSRF-Token`, or `form_token` from a
    form field); `json_only` endpoints also need `Content-Type: application/json`.
    """
    token = request.headers.get(CSRF_HEADER, "") or form_token
    if not (same_origin(request) or _same(token, session.csrf_token)):
        return msg("api_csrf_refused")
    if json_only and not is_json(request.headers.get("content-type", "")):
        return msg("api_json_required")
    return None


def same_origin(request: Request) -> bool:
    """Whether the request's `Origin` header is this server's origin (scheme://host[:port] from Host)."""
    origin = request.headers.get("origin", "")
    host = request.headers.get("host", "")
    return bool(origin and host) and origin.lower() == f"{request.url.scheme}://{host}".lower()


def is_json(content_type: str) -> bool:
    """Whether a Content-Type header names application/json (parameters such as charset allowed)."""
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def _same(given: str, expected: str) -> bool:
    # Constant-time, and never equal to an empty expectation.
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def require(auth: Auth, *scopes: Scope, role: Role = Role.VIEWER):  # type: ignore[no-untyped-def]
    """A FastAPI dependency: 401 (or 403 for a possibly forged cookie request, or a role below `role`) in
    OpenAI's error shape unless the request opens one of `scopes` with at least `role`."""
    from service.http.errors import ApiError

    def dependency(request: Request) -> None:
        refused = auth.refusal(request, *scopes, role=role)
        if refused is not None:
            status, message = refused
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            raise ApiError(status, message, headers=headers)

    return dependency
