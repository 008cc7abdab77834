"""loan.restructured_on: the date of the last approved term extension

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 06:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('loan', schema=None) as batch_op:
        batch_op.add_column(sa.Column('restructured_on', sa.Date(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('loan', schema=None) as batch_op:
        batch_op.drop_column('restructured_on')
