"""Named staff accounts (`users`), through the store's single writer.

A name is whatever staff call each other (letters of any script, digits, `.`, `_`, `-`, `@`, up to 64), and
two names are the same account when they differ only in case or width (`name_key`), so 「Li」 and 「li」
cannot both exist and either logs in. Names with `:` are kept for what is not a person (`key:…` sessions
opened with the access key). A new password, a new role or a removal ends every session of that account in the
same transaction: whatever the old password or role opened is closed at once.
"""

from __future__ import annotations

import re
import unicodedata

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from db.models import LoginSession, Role, User, utcnow
from db.store import Store

MAX_NAME = 64
_NAME = re.compile(r"^[\w.@-]+$")
# Actors the audit log and `reviewed_by` use for what is not an account.
RESERVED_NAMES = frozenset({"api-key", "anonymous"})


class AccountError(ValueError):
    """An account change the store refuses; `reason`: 'exists', 'unknown', 'name' or 'role'."""

    def __init__(self, reason: str, name: str) -> None:
        super().__init__(f"{reason}: {name}")
        self.reason = reason
        self.name = name


def name_key(name: str) -> str:
    """What makes two names one account: NFKC (full-width letters as ASCII) and case folded."""
    return unicodedata.normalize("NFKC", name.strip()).casefold()


def check_name(name: str) -> str:
    """The name as stored (trimmed, NFC); `AccountError('name')` for one that cannot be an account name."""
    cleaned = unicodedata.normalize("NFC", name.strip())
    if not (0 < len(cleaned) <= MAX_NAME and _NAME.match(cleaned)) or name_key(cleaned) in RESERVED_NAMES:
        raise AccountError("name", name)
    return cleaned


def check_role(role: str) -> Role:
    """`role` as a Role; `AccountError('role')` for anything else."""
    try:
        return Role(role)
    except ValueError:
        raise AccountError("role", role) from None


class UserStore:
    """Reads and writes of `users`; account changes end the account's sessions."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def any(self) -> bool:
        """Whether at least one account exists (then the web UI asks everyone to log in)."""
        with self.store.read_session() as session:
            return session.scalar(select(User.id).limit(1)) is not None

    def get(self, name: str) -> User | None:
        """The account called `name` (any case or width), or None."""
        key = name_key(name)
        if not key or len(key) > MAX_NAME * 2:
            return None
        with self.store.read_session() as session:
            return session.scalars(select(User).where(User.name_key == key)).first()

    def all(self) -> list[User]:
        """Every account, by name."""
        with self.store.read_session() as session:
            return list(session.scalars(select(User).order_by(User.name_key)))

    def admins(self) -> int:
        """How many accounts have the admin role."""
        with self.store.read_session() as session:
            return int(session.scalar(select(func.count()).where(User.role == Role.ADMIN)) or 0)

    def add(self, name: str, role: str, password_hash: str) -> User:
        """A new account; `AccountError` for a bad name or role, or one that exists already."""
        cleaned, checked = check_name(name), check_role(role)
        with self.store.write_session() as session:
            if session.scalars(select(User.id).where(User.name_key == name_key(cleaned))).first():
                raise AccountError("exists", cleaned)
            user = User(name=cleaned, name_key=name_key(cleaned), role=checked, password_hash=password_hash)
            session.add(user)
            session.flush()
            return user

    def set_password(self, name: str, password_hash: str, *, end_sessions: bool = True) -> int:
        """A new password hash; returns how many sessions it ended (none for a re-hash at login)."""
        with self.store.write_session() as session:
            user = _existing(session, name)
            user.password_hash = password_hash
            if not end_sessions:
                return 0
            user.password_changed_at = utcnow()
            return _end_sessions(session, user.name)

    def set_role(self, name: str, role: str) -> int:
        """A new role; returns how many sessions it ended (they carried the old role)."""
        checked = check_role(role)
        with self.store.write_session() as session:
            user = _existing(session, name)
            if user.role == checked:
                return 0
            user.role = checked
            return _end_sessions(session, user.name)

    def remove(self, name: str) -> int:
        """Delete the account; returns how many sessions it ended."""
        with self.store.write_session() as session:
            user = _existing(session, name)
            session.delete(user)
            return _end_sessions(session, user.name)

    def logged_in(self, name: str) -> None:
        """Record a successful login."""
        with self.store.write_session() as session:
            user = session.scalars(select(User).where(User.name_key == name_key(name))).first()
            if user is not None:
                user.last_login_at = utcnow()


def _existing(session: Session, name: str) -> User:
    user = session.scalars(select(User).where(User.name_key == name_key(name))).first()
    if user is None:
        raise AccountError("unknown", name)
    return user


def _end_sessions(session: Session, user_name: str) -> int:
    result = session.execute(delete(LoginSession).where(LoginSession.user == user_name))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
