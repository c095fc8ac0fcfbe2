"""grams given: the spine's hot writes hand the gram index its tokens, so SQLite never calls back into Python

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 14:00:00

The gram index's triggers (0005) call `tuwen_grams()`, a Python function, for every row they index. Inside
a statement, each such call must take Python's GIL again, and while a backlog runs at full speed the GIL is
busy: a round of 100 new scans was 100 waits of up to a switch interval each, with the store's single
writer held the whole time (a 100-row insert: 0.3 ms alone, 0.5 s beside one busy Python thread).

- `jobs.grams_new`, `jobs.grams_old`: the tokens of the new and of the replaced `search_text`, set only by
  the store's hot writes (db/hot_writes.py), which compute them before taking the writer. The triggers use
  them when set (`coalesce` evaluates `tuwen_grams()` only when they are not) and clear them in the same
  statement: at rest both are always NULL, so they cost no space. Any other write (the ORM, the sqlite3
  shell through tuwen's commands, a copy) leaves them NULL and is indexed by the function, as before.
- The delete trigger is unchanged: a deleted row's tokens always come from `tuwen_grams(old.search_text)`.
- PostgreSQL has no gram index (pg_trgm answers short terms there): it gets the two columns only, so both
  databases keep one schema.
"""

from alembic import op
import sqlalchemy as sa

from db.grams import GRAMS_FUNCTION, GRAMS_TABLE


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

_G, _F = GRAMS_TABLE, GRAMS_FUNCTION
_CHANGED = ('jobs_grams_insert', 'jobs_grams_update')

_GIVEN = [
    f"""CREATE TRIGGER jobs_grams_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO {_G}(rowid, grams) VALUES (new.id, coalesce(new.grams_new, {_F}(new.search_text)));
        UPDATE jobs SET grams_new = NULL WHERE id = new.id AND new.grams_new IS NOT NULL;
    END""",
    # `grams_old` is trusted only because the hot write that sets it checks, in its WHERE, that the row's
    # search_text is the very text these tokens were computed from.
    f"""CREATE TRIGGER jobs_grams_update AFTER UPDATE OF search_text ON jobs BEGIN
        INSERT INTO {_G}({_G}, rowid, grams)
            VALUES ('delete', old.id, coalesce(new.grams_old, {_F}(old.search_text)));
        INSERT INTO {_G}(rowid, grams) VALUES (new.id, coalesce(new.grams_new, {_F}(new.search_text)));
        UPDATE jobs SET grams_new = NULL, grams_old = NULL
            WHERE id = new.id AND (new.grams_new IS NOT NULL OR new.grams_old IS NOT NULL);
    END""",
]

# As migration 0005 made them.
_CALLED = [
    f"""CREATE TRIGGER jobs_grams_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO {_G}(rowid, grams) VALUES (new.id, {_F}(new.search_text));
    END""",
    f"""CREATE TRIGGER jobs_grams_update AFTER UPDATE OF search_text ON jobs BEGIN
        INSERT INTO {_G}({_G}, rowid, grams) VALUES ('delete', old.id, {_F}(old.search_text));
        INSERT INTO {_G}(rowid, grams) VALUES (new.id, {_F}(new.search_text));
    END""",
]


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _replace_triggers(statements: list[str]) -> None:
    for trigger in _CHANGED:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    for statement in statements:
        op.execute(statement)


def upgrade() -> None:
    # Plain ALTER TABLE ADD COLUMN on both dialects (nullable: no copy of jobs).
    op.add_column('jobs', sa.Column('grams_new', sa.Text(), nullable=True))
    op.add_column('jobs', sa.Column('grams_old', sa.Text(), nullable=True))
    if _sqlite():
        _replace_triggers(_GIVEN)


def downgrade() -> None:
    if _sqlite():
        _replace_triggers(_CALLED)
    op.drop_column('jobs', 'grams_old')
    op.drop_column('jobs', 'grams_new')
