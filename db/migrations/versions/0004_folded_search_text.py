"""folded search text: simplified/traditional Chinese and full/half width find each other

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 10:00:00

- `jobs.search_text`: `db.models.search_text_of` the five searched columns (question, answer, ocr_text,
  correction, file_path), folded by `db.folding.fold` (NFKC, OpenCC t2s, casefold), one column per line.
  Filled here for every existing row, streamed in batches by id (never all rows in memory).
- `jobs_fts` now indexes `search_text` alone: the 0002 index and its triggers are dropped first (so the
  fill does not feed a second index), created again on `search_text` and rebuilt once at the end.

On PostgreSQL there is no FTS5: the same folded `search_text` gets a GIN trigram index (`pg_trgm`), which
serves `LIKE '%term%'` for terms of three characters or more; shorter ones scan, as they do on SQLite.

The fill uses the same function the store uses on every write, so rows written before and after this
migration fold alike. Downgrade puts back the 0002 index over the five original columns.
"""

import logging
import time

from alembic import op
import sqlalchemy as sa

from db.models import SEARCHED_COLUMNS, search_text_of


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

log = logging.getLogger(f"tuwen.{__name__}")

BATCH_ROWS = 2000
_TRIGGERS = ('jobs_fts_update', 'jobs_fts_delete', 'jobs_fts_insert')


def _index(columns: str) -> list[str]:
    """The external-content trigram index over `columns` of jobs, its three triggers, and a rebuild."""
    new = ", ".join(f"new.{c.strip()}" for c in columns.split(","))
    old = ", ".join(f"old.{c.strip()}" for c in columns.split(","))
    return [
        f"CREATE VIRTUAL TABLE jobs_fts USING fts5({columns}, "
        "content='jobs', content_rowid='id', tokenize='trigram')",
        f"""CREATE TRIGGER jobs_fts_insert AFTER INSERT ON jobs BEGIN
            INSERT INTO jobs_fts(rowid, {columns}) VALUES (new.id, {new});
        END""",
        # An external-content index forgets a row only when told the exact values it indexed.
        f"""CREATE TRIGGER jobs_fts_delete AFTER DELETE ON jobs BEGIN
            INSERT INTO jobs_fts(jobs_fts, rowid, {columns}) VALUES ('delete', old.id, {old});
        END""",
        # Only updates of indexed columns: claiming and retrying a job touch status columns many times.
        f"""CREATE TRIGGER jobs_fts_update AFTER UPDATE OF {columns} ON jobs BEGIN
            INSERT INTO jobs_fts(jobs_fts, rowid, {columns}) VALUES ('delete', old.id, {old});
            INSERT INTO jobs_fts(rowid, {columns}) VALUES (new.id, {new});
        END""",
        "INSERT INTO jobs_fts(jobs_fts) VALUES ('rebuild')",
    ]


PG_INDEX = 'ix_jobs_search_trgm'


def _postgresql() -> bool:
    return op.get_bind().dialect.name == 'postgresql'


def _drop_index() -> None:
    if _postgresql():
        op.execute(f"DROP INDEX IF EXISTS {PG_INDEX}")
        return
    for trigger in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute("DROP TABLE IF EXISTS jobs_fts")


def fill_search_text(connection: sa.Connection, batch: int = BATCH_ROWS) -> int:
    """Set `search_text` on every job, `batch` rows at a time in id order; returns how many rows."""
    select = sa.text(
        f"SELECT id, {', '.join(SEARCHED_COLUMNS)} FROM jobs WHERE id > :after ORDER BY id LIMIT :batch"
    )
    update = sa.text("UPDATE jobs SET search_text = :text WHERE id = :id")
    after, done = 0, 0
    while True:
        rows = connection.execute(select, {"after": after, "batch": batch}).all()
        if not rows:
            return done
        connection.execute(update, [{"id": row[0], "text": search_text_of(row[1:])} for row in rows])
        after, done = rows[-1][0], done + len(rows)


def upgrade() -> None:
    # Plain ALTER TABLE ADD COLUMN (no batch copy of jobs).
    op.add_column('jobs', sa.Column('search_text', sa.Text(), nullable=True))
    _drop_index()
    # Minutes on a large archive (100,000 jobs of ~800 characters: about 3 min on 2 busy cores, most of it
    # the index rebuild): say so, since `tuwen serve` is not answering meanwhile.
    started = time.monotonic()
    log.info("folding the search text of every job and rebuilding the search index (once)")
    count = fill_search_text(op.get_bind())
    if _postgresql():
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute(f"CREATE INDEX {PG_INDEX} ON jobs USING gin (search_text gin_trgm_ops)")
    else:
        for statement in _index("search_text"):
            op.execute(statement)
    log.info("search text of %d jobs folded and indexed in %.0f s", count, time.monotonic() - started)


def downgrade() -> None:
    _drop_index()
    op.drop_column('jobs', 'search_text')
    if _postgresql():
        return
    for statement in _index("question, answer, ocr_text, correction, file_path"):
        op.execute(statement)
