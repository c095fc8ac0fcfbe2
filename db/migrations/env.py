"""Alembic environment: runs on the connection `db.store.Store.migrate` hands over, or on a URL.

`include_object` keeps autogenerate away from the FTS5 index (a virtual table and its shadow tables, which
the models cannot describe; migration 0002 owns them).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from db.models import Base, include_object

config = context.config
target_metadata = Base.metadata


def _run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations() -> None:
    """Run migrations online (tuwen always has a live SQLite connection)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite:///data/tuwen.sqlite3")
    with engine.begin() as conn:
        _run_on(conn)


run_migrations()
