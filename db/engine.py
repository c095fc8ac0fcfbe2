"""Which database a store opens, from one URL: a SQLite file (the default) or PostgreSQL through psycopg 3.

`[storage] database_url` empty means the SQLite file under `data_dir`, as before. A PostgreSQL URL
(`postgresql+psycopg://user:pass@host/db`; plain `postgresql://` is read as psycopg too) lets several
`tuwen serve` nodes share one queue and one history. The URL holds a password: it is shown only through
`shown()` (password masked) and its password is registered with `service.redact` by whoever loads it.

What differs between the two stays here and in the few places that must know (`Store`, `db.history`, the
migrations): SQLite gets WAL mode and a busy timeout; PostgreSQL gets a connection pool that checks
connections before use (a restarted server is reconnected, not reported as a fault forever), an
`application_name` naming the node, and text parameters made NUL-safe. PostgreSQL text cannot hold U+0000
at all (psycopg refuses the whole statement); SQLite can. A NUL in a question, an answer or a file name has
no meaning to a person, so on PostgreSQL it is stored as U+FFFD, the way lone surrogates already are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError

from db import grams

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
DIALECTS = (SQLITE, POSTGRESQL)
# Connections one PostgreSQL node keeps (the worker, the dispatcher's recorders, HTTP reads, watchers).
POOL_SIZE = 8
POOL_OVERFLOW = 16


class UnsupportedDatabase(ValueError):
    """A URL for a database tuwen does not run on (only SQLite and PostgreSQL)."""


def database_url(target: Path | str) -> URL:
    """The SQLAlchemy URL for a SQLite file path or a database URL; `UnsupportedDatabase` otherwise."""
    if isinstance(target, Path) or "://" not in target:
        return URL.create("sqlite", database=str(target))
    try:
        url = make_url(target)
    except ArgumentError as exc:
        raise UnsupportedDatabase(f"not a database URL: {exc}") from None
    backend = url.get_backend_name()
    if backend not in DIALECTS:
        raise UnsupportedDatabase(f"{backend!r} is not supported: use sqlite:/// or postgresql+psycopg://")
    if backend == POSTGRESQL:
        if url.get_driver_name() not in ("psycopg", "postgresql"):
            raise UnsupportedDatabase(f"driver {url.get_driver_name()!r}: use postgresql+psycopg://")
        url = url.set(drivername="postgresql+psycopg")
    return url


def shown(url: URL) -> str:
    """The URL as people may see it: the password masked."""
    if url.get_backend_name() == SQLITE:
        return url.database or ""
    return url.render_as_string(hide_password=True)


def url_secrets(target: str) -> list[str]:
    """What to scrub from logs for a configured URL: its password, and the whole URL (which contains it)."""
    try:
        url = make_url(target) if "://" in target else None
    except ArgumentError:
        return [target]
    if url is None or not url.password:
        return []
    password = str(url.password)
    return list(dict.fromkeys([password, quote(password, safe=""), target]))


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL (None for PostgreSQL or an in-memory SQLite)."""
    if url.get_backend_name() != SQLITE or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def make_engine(url: URL, *, name: str = "tuwen") -> Engine:
    """An engine for `url`: SQLite with WAL pragmas, or PostgreSQL with a checked pool and NUL-safe text."""
    if url.get_backend_name() == SQLITE:
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
        connect_args={"application_name": name[:63], "connect_timeout": 10},
    )
    event.listen(engine, "connect", _nul_safe_text)
    return engine


def psycopg_connect_args(engine: Engine) -> tuple[list[Any], dict[str, Any]]:
    """How psycopg itself connects to the engine's database (for a connection outside the pool)."""
    args, kwargs = engine.dialect.create_connect_args(engine.url)
    return list(args), dict(kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers don't block the writer; NORMAL sync is durable across process crashes in WAL mode.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # The short-term search index's triggers call it (db/grams.py).
    grams.register(dbapi_connection)


def _nul_safe_text(dbapi_connection: Any, _record: Any) -> None:
    from psycopg.types.string import StrBinaryDumper, StrDumperUnknown

    class NulSafeText(StrDumperUnknown):
        def dump(self, obj: str) -> Any:
            return super().dump(obj.replace("\x00", "\ufffd"))

    class NulSafeBinaryText(StrBinaryDumper):
        def dump(self, obj: str) -> Any:
            return super().dump(obj.replace("\x00", "\ufffd"))

    dbapi_connection.adapters.register_dumper(str, NulSafeText)
    dbapi_connection.adapters.register_dumper(str, NulSafeBinaryText)
