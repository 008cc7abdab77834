"""payment.reversed_on: the business date a reversal counts from

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reversed_on', sa.Date(), nullable=True))
    # Reversals recorded before this revision count from the UTC date of their instant, the
    # date the payment_reversal window was measured from until now.
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("UPDATE payment SET reversed_on = (reversed_at AT TIME ZONE 'UTC')::date "
                   "WHERE reversed_at IS NOT NULL")
    else:
        op.execute("UPDATE payment SET reversed_on = date(reversed_at) "
                   "WHERE reversed_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.drop_column('reversed_on')
