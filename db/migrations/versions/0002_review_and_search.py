"""review columns and a trigram full-text index

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 10:00:00

- `jobs.review_status` ('unreviewed' | 'correct' | 'corrected'), `jobs.correction`, `jobs.reviewed_at`.
- `jobs_fts`: an FTS5 index with the trigram tokenizer (SQLite >= 3.34), so substring search works for
  Chinese, which has no spaces for a word tokenizer to split on. It is an *external-content* index of
  `jobs` (the text is stored once, in `jobs`), kept in step by three triggers; rows that exist when this
  runs are indexed by FTS5's 'rebuild' command.

A later migration that makes Alembic *recreate* `jobs` (batch mode copies it to a new table) drops these
triggers with the old table: it must create them again and rebuild the index.
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_COLUMNS = "question, answer, ocr_text, correction, file_path"
_NEW = "new.question, new.answer, new.ocr_text, new.correction, new.file_path"
_OLD = "old.question, old.answer, old.ocr_text, old.correction, old.file_path"

_CREATE = [
    f"CREATE VIRTUAL TABLE jobs_fts USING fts5({_COLUMNS}, "
    "content='jobs', content_rowid='id', tokenize='trigram')",
    f"""CREATE TRIGGER jobs_fts_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO jobs_fts(rowid, {_COLUMNS}) VALUES (new.id, {_NEW});
    END""",
    # An external-content index forgets a row only when told the exact values it indexed.
    f"""CREATE TRIGGER jobs_fts_delete AFTER DELETE ON jobs BEGIN
        INSERT INTO jobs_fts(jobs_fts, rowid, {_COLUMNS}) VALUES ('delete', old.id, {_OLD});
    END""",
    # Only updates of indexed columns: claiming and retrying a job touch status columns many times.
    f"""CREATE TRIGGER jobs_fts_update AFTER UPDATE OF {_COLUMNS} ON jobs BEGIN
        INSERT INTO jobs_fts(jobs_fts, rowid, {_COLUMNS}) VALUES ('delete', old.id, {_OLD});
        INSERT INTO jobs_fts(rowid, {_COLUMNS}) VALUES (new.id, {_NEW});
    END""",
    "INSERT INTO jobs_fts(jobs_fts) VALUES ('rebuild')",
]


def upgrade() -> None:
    # Plain ALTER TABLE ADD COLUMN (no batch copy): SQLite adds a NOT NULL column with a constant default.
    op.add_column('jobs', sa.Column('review_status', sa.String(length=16), server_default='unreviewed', nullable=False))
    op.add_column('jobs', sa.Column('correction', sa.Text(), nullable=True))
    op.add_column('jobs', sa.Column('reviewed_at', sa.DateTime(), nullable=True))
    op.create_index('ix_jobs_review', 'jobs', ['status', 'review_status'], unique=False)
    if op.get_bind().dialect.name != 'sqlite':
        return  # FTS5 is SQLite's; PostgreSQL gets its trigram index on search_text in 0004
    for statement in _CREATE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != 'sqlite':
        op.drop_index('ix_jobs_review', table_name='jobs')
        for column in ('reviewed_at', 'correction', 'review_status'):
            op.drop_column('jobs', column)
        return
    for trigger in ('jobs_fts_update', 'jobs_fts_delete', 'jobs_fts_insert'):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute("DROP TABLE IF EXISTS jobs_fts")
    op.drop_index('ix_jobs_review', table_name='jobs')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('reviewed_at')
        batch_op.drop_column('correction')
        batch_op.drop_column('review_status')
