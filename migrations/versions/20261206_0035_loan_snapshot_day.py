"""loan_snapshot_day: the dates whose snapshot the close took, with open loans or none, so that
roll rates compare a close of a book with no open loan (it left no snapshot row, and was
refused as "no close snapshot"); reading them no longer scans every snapshot row

Revision ID: 0035
Revises: 0034
Create Date: 2026-12-06 01:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0035'
down_revision: str | None = '0034'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'loan_snapshot_day',
        sa.Column('as_of', sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint('as_of'),
    )
    op.execute('INSERT INTO loan_snapshot_day (as_of) SELECT DISTINCT as_of FROM loan_snapshot')


def downgrade() -> None:
    op.drop_table('loan_snapshot_day')
