"""close_run.owner: the process running the close in process (app/ops/processes.py), so that
one killed outright is known to have ended, on its machine, before its run goes stale

Revision ID: 0042
Revises: 0041
Create Date: 2026-12-07 07:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0042'
down_revision: str | None = '0041'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('close_run') as batch:
        batch.add_column(sa.Column('owner', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('close_run') as batch:
        batch.drop_column('owner')
