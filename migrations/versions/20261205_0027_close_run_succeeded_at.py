"""close_run.succeeded_at: when the date's close last succeeded, kept through a rerun that
fails, so the business date (the latest date ever closed) does not move back a day

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-05 18:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0027'
down_revision: str | None = '0026'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('close_run', schema=None) as batch_op:
        batch_op.add_column(sa.Column('succeeded_at', sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE close_run SET succeeded_at = coalesce(finished_at, started_at, CURRENT_TIMESTAMP) "
        "WHERE status = 'succeeded'"
    )


def downgrade() -> None:
    with op.batch_alter_table('close_run', schema=None) as batch_op:
        batch_op.drop_column('succeeded_at')
