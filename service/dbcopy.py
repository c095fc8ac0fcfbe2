"""`tuwen db copy --to URL`: the whole history from the configured database into another one.

For moving from the SQLite file to a shared PostgreSQL database when a second node joins (or back, when
a branch goes on alone). The target is migrated to the newest schema first and must hold no rows: a copy
into a database in use would mix two histories and collide on ids. Rows are read in primary-key order, a
batch at a time (never a whole table in memory), and written in one transaction per batch with the same
ids, so links between tables (files to jobs, duplicates to their originals) stay true. Afterwards the row
count of every table is compared and reported; on PostgreSQL each id sequence is moved past the copied ids.

Stop `tuwen serve` first: rows written while the copy runs may or may not be in it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service import redact
from service.config import Config
from service.errors import StorageUnavailable
from service.messages import msg

if TYPE_CHECKING:
    from sqlalchemy import Connection, Table

# SQLAlchemy, the models and the store are imported when a copy runs: `tuwen` itself must start quickly
# (the parser is built from this module for every command).

log = logging.getLogger(f"tuwen.{__name__}")

BATCH_ROWS = 1000


class CopyRefused(Exception):
    """The copy cannot start; the message says why (a non-empty target, the same database, a bad URL)."""


@dataclass(frozen=True)
class TableCount:
    """How many rows a table holds in the source and, after the copy, in the target."""

    table: str
    source: int
    target: int


def add_db_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """`tuwen db copy --to URL [--batch N]`."""
    db = sub.add_parser("db", parents=[common], help="database maintenance (copy to another database)")
    actions = db.add_subparsers(dest="db_command", required=True)
    copy = actions.add_parser("copy", parents=[common], help="copy every row into an empty database")
    copy.add_argument("--to", required=True, metavar="URL", help="postgresql+psycopg://… or sqlite:///PATH")
    copy.add_argument("--batch", type=int, default=BATCH_ROWS, help="rows per transaction (default 1000)")


def db_command(config: Config, args: argparse.Namespace) -> int:
    """Run `tuwen db copy`; prints one line per table and exits 0 only when every count matches."""
    from db.engine import url_secrets

    redact.register(url_secrets(args.to))
    try:
        counts = copy_database(config, args.to, batch=max(1, args.batch))
    except (CopyRefused, StorageUnavailable) as exc:
        print(str(getattr(exc, "message", exc)), file=sys.stderr)
        return 1
    for count in counts:
        print(str(msg("db_copy_table", table=count.table, source=count.source, target=count.target)))
    if any(count.source != count.target for count in counts):
        print(str(msg("db_copy_mismatch")), file=sys.stderr)
        return 1
    print(str(msg("db_copy_done", rows=sum(c.target for c in counts))))
    return 0


def copy_database(config: Config, to: str, *, batch: int = BATCH_ROWS) -> list[TableCount]:
    """Copy every table of the configured database into the empty database at `to`; the counts after."""
    from db.engine import UnsupportedDatabase
    from db.models import Base
    from db.store import Store

    source = Store(config.db_target, data_dir=config.storage.data_dir)
    try:
        target = Store(to)
    except UnsupportedDatabase as exc:
        source.close()
        raise CopyRefused(str(msg("config_database_url", reason=exc))) from None
    try:
        if source.url.render_as_string(hide_password=False) == target.url.render_as_string(
            hide_password=False
        ):
            raise CopyRefused(str(msg("db_copy_same", target=target.shown)))
        source.migrate()
        target.migrate()
        tables = list(Base.metadata.sorted_tables)  # parents before children
        with source.engine.connect() as reading, target.engine.connect() as writing:
            busy = [table.name for table in tables if _count(writing, table)]
            if busy:
                raise CopyRefused(str(msg("db_copy_not_empty", target=target.shown, tables=", ".join(busy))))
            writing.commit()  # end the counting transaction: each batch below is its own
            for table in tables:
                copied = _copy_table(reading, writing, table, batch)
                log.info("%s: %d rows copied", table.name, copied)
            if target.postgresql:
                _reset_sequences(writing, tables)
            return [TableCount(t.name, _count(reading, t), _count(writing, t)) for t in tables]
    finally:
        source.close()
        target.close()


def _count(connection: Connection, table: Table) -> int:
    from sqlalchemy import func, select

    return int(connection.execute(select(func.count()).select_from(table)).scalar() or 0)


def _copy_table(reading: Connection, writing: Connection, table: Table, batch: int) -> int:
    from sqlalchemy import select

    key = list(table.primary_key.columns)[0]  # every tuwen table has a one-column primary key
    last: Any = None
    copied = 0
    while True:
        query = select(table).order_by(key).limit(batch)
        if last is not None:
            query = query.where(key > last)
        rows = [dict(row) for row in reading.execute(query).mappings()]
        if not rows:
            return copied
        with writing.begin():
            writing.execute(table.insert(), rows)
        last, copied = rows[-1][key.name], copied + len(rows)


def _reset_sequences(writing: Connection, tables: list[Table]) -> None:
    from sqlalchemy import Integer, text

    # Rows came with their ids: the next id PostgreSQL hands out must come after the largest copied one.
    with writing.begin():
        for table in tables:
            key = list(table.primary_key.columns)[0]
            if not isinstance(key.type, Integer):
                continue
            writing.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{key.name}'), "
                    f"COALESCE(MAX({key.name}), 1), MAX({key.name}) IS NOT NULL) FROM {table.name}"
                )
            )
