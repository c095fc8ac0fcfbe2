"""The Alembic migrations build exactly the schema the models describe, and the database runs in WAL mode."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from db.models import Base, include_object
from db.store import Store


def test_migrations_match_the_models(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.sqlite3")
    store.migrate()
    with store.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"include_object": include_object}), Base.metadata
        )
    assert diff == []
    assert "alembic_version" in inspect(store.engine).get_table_names()


def test_migrate_is_idempotent_and_uses_wal(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.sqlite3")
    store.migrate()
    store.migrate()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert store.integrity_check() == "ok"
