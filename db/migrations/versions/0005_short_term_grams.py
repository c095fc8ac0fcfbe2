"""one- and two-character search through an index of character grams (db.grams)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 02:00:00

- `jobs_grams`: a contentless FTS5 table (no positions) of each job's distinct 1- and 2-character
  substrings of `search_text`, as tokens from `tuwen_grams()` (db.grams). Kept current by three triggers.
- Filled here for every existing row in batches by id (never all rows in memory).

SQLite only: PostgreSQL answers short terms from its pg_trgm index. Downgrade drops the table and triggers;
short terms then fall back to a scan again.
"""

import logging
import time

from alembic import op
import sqlalchemy as sa

from db.grams import GRAMS_FUNCTION, GRAMS_TABLE, register


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

log = logging.getLogger(f"tuwen.{__name__}")

BATCH_ROWS = 2000
_TRIGGERS = ('jobs_grams_insert', 'jobs_grams_delete', 'jobs_grams_update')
_G = GRAMS_TABLE
_F = GRAMS_FUNCTION

_CREATE = [
    f"CREATE VIRTUAL TABLE {_G} USING fts5(grams, content='', detail=none)",
    f"""CREATE TRIGGER jobs_grams_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO {_G}(rowid, grams) VALUES (new.id, {_F}(new.search_text));
    END""",
    # A contentless index forgets a row only when given the exact tokens it indexed: the same function of
    # the old text gives them.
    f"""CREATE TRIGGER jobs_grams_delete AFTER DELETE ON jobs BEGIN
        INSERT INTO {_G}({_G}, rowid, grams) VALUES ('delete', old.id, {_F}(old.search_text));
    END""",
    f"""CREATE TRIGGER jobs_grams_update AFTER UPDATE OF search_text ON jobs BEGIN
        INSERT INTO {_G}({_G}, rowid, grams) VALUES ('delete', old.id, {_F}(old.search_text));
        INSERT INTO {_G}(rowid, grams) VALUES (new.id, {_F}(new.search_text));
    END""",
]


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def fill_grams(connection: sa.Connection, batch: int = BATCH_ROWS) -> int:
    """Index every job's grams, `batch` rows at a time in id order; returns how many rows."""
    register(connection.connection.driver_connection)
    fill = sa.text(
        f"INSERT INTO {_G}(rowid, grams) SELECT id, {_F}(search_text) FROM jobs "
        "WHERE id > :after AND id <= :upto"
    )
    last = connection.execute(sa.text("SELECT max(id) FROM jobs")).scalar() or 0
    after = 0
    while after < last:
        connection.execute(fill, {"after": after, "upto": after + batch})
        after += batch
    return int(connection.execute(sa.text("SELECT count(*) FROM jobs")).scalar() or 0)


def upgrade() -> None:
    if not _sqlite():
        return
    started = time.monotonic()
    log.info("indexing the characters of every job for one- and two-character search (once)")
    op.execute(_CREATE[0])
    count = fill_grams(op.get_bind())
    for statement in _CREATE[1:]:
        op.execute(statement)
    log.info("characters of %d jobs indexed in %.0f s", count, time.monotonic() - started)


def downgrade() -> None:
    if not _sqlite():
        return
    for trigger in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute(f"DROP TABLE IF EXISTS {_G}")
