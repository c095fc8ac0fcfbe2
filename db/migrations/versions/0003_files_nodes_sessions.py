"""file states, nodes, sessions, and job columns for trust and scale

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 22:00:00

- `files`: the last seen state of each watched (or batch) file, keyed by the path's bytes, so a touched,
  re-copied or renamed scan updates a row instead of becoming a second job.
- `nodes`: each running `tuwen serve` with a heartbeat (the CLI hands its jobs to a live one).
- `sessions`: server-side login sessions (logout and expiry really end them).
- `jobs`: answer_kind, finish_reason, error_params, notes, node, timeouts, catalogued, ocr_lines,
  needs_review, rotation, reviewed_by, request_id, options.

Columns are added with plain ALTER TABLE (no batch copy), so the FTS triggers of 0002 stay in place.
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_JOB_COLUMNS: list[sa.Column] = [  # type: ignore[type-arg]
    sa.Column('answer_kind', sa.String(length=16), nullable=True),
    sa.Column('finish_reason', sa.String(length=16), nullable=True),
    sa.Column('error_params', sa.JSON(), nullable=True),
    sa.Column('notes', sa.JSON(), nullable=True),
    sa.Column('node', sa.String(length=128), nullable=True),
    sa.Column('timeouts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('catalogued', sa.Integer(), server_default='0', nullable=False),
    sa.Column('ocr_lines', sa.JSON(), nullable=True),
    sa.Column('needs_review', sa.Integer(), server_default='0', nullable=False),
    sa.Column('rotation', sa.Integer(), nullable=True),
    sa.Column('reviewed_by', sa.String(length=128), nullable=True),
    sa.Column('request_id', sa.String(length=64), nullable=True),
    sa.Column('options', sa.JSON(), nullable=True),
]


def upgrade() -> None:
    for column in _JOB_COLUMNS:
        op.add_column('jobs', column)
    op.create_index('ix_jobs_node', 'jobs', ['status', 'node'], unique=False)
    # Jobs answered before this migration: every catalogue row they had was written at the time, and the
    # backend tells what kind of answer each is.
    op.execute("UPDATE jobs SET catalogued = 1 WHERE status IN ('done', 'failed')")
    op.execute("UPDATE jobs SET answer_kind = CASE WHEN backend = 'ocr' THEN 'ocr' ELSE 'model' END "
               "WHERE status = 'done'")
    op.create_table('files',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('source_ref', sa.String(length=512), nullable=False),
    sa.Column('path', sa.LargeBinary(), nullable=False),
    sa.Column('display_path', sa.Text(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('mtime_ns', sa.BigInteger(), nullable=False),
    sa.Column('ctime_ns', sa.BigInteger(), nullable=False),
    sa.Column('inode', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('source', 'source_ref', 'path', name='uq_files_path')
    )
    op.create_index('ix_files_sha', 'files', ['source', 'source_ref', 'sha256'], unique=False)
    # Files answered before this migration: their newest finished job becomes their recorded state. ctime
    # and inode were never recorded (0), so the first scan hashes each file once, finds the same content
    # and only fills them in: no job is created again.
    if op.get_bind().dialect.name == 'sqlite':
        op.execute(
            """INSERT INTO files (source, source_ref, path, display_path, size, mtime_ns, ctime_ns, inode,
                                  sha256, job_id, state, updated_at)
               SELECT j.source, j.source_ref, CAST(j.file_path AS BLOB), j.file_path,
                      COALESCE(j.file_size, 0), CAST(COALESCE(j.file_mtime, 0) * 1000000000 AS INTEGER), 0, 0,
                      j.sha256, j.id, 'present', CURRENT_TIMESTAMP
               FROM jobs j
               WHERE j.id IN (SELECT max(id) FROM jobs
                              WHERE source IN ('watch', 'batch') AND file_path IS NOT NULL
                                AND status IN ('done', 'failed')
                              GROUP BY source, source_ref, file_path)"""
        )
    op.create_table('nodes',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('version', sa.String(length=32), nullable=False),
    sa.Column('backend', sa.String(length=32), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(), nullable=False),
    sa.Column('stopped_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('sessions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('user', sa.String(length=128), nullable=True),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('csrf_token', sa.String(length=64), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_sessions_expires', 'sessions', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_sessions_expires', table_name='sessions')
    op.drop_table('sessions')
    op.drop_table('nodes')
    op.drop_index('ix_files_sha', table_name='files')
    op.drop_table('files')
    op.drop_index('ix_jobs_node', table_name='jobs')
    for column in reversed(_JOB_COLUMNS):
        op.drop_column('jobs', column.name)
