"""origin node: an interactive job is answered by the node its caller is connected to

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 01:40:00

- `jobs.origin_node`: the `[node] name` that received an interactive job (API, web, kiosk, chat); empty for
  backlog jobs (folders, batches), which any node may claim. Existing rows keep it empty.
- `ix_jobs_finished` (source, source_ref, finished_at): a folder's watcher finds the jobs other nodes
  finished lately, to write their sidecars (watchers/folder.py).
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE ADD COLUMN on both dialects (a nullable column: no copy of jobs).
    op.add_column('jobs', sa.Column('origin_node', sa.String(length=128), nullable=True))
    op.create_index('ix_jobs_finished', 'jobs', ['source', 'source_ref', 'finished_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_jobs_finished', table_name='jobs')
    op.drop_column('jobs', 'origin_node')
