"""payment: ix_payment_reversed_on, the loans a close re-evaluates for a reversal of its date

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-04 00:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0022'
down_revision: str | None = '0021'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REVERSED = "reversed_on IS NOT NULL"


def upgrade() -> None:
    # A reversal dated after the business date counts from the close of its date: each close
    # looks its loans up by reversed_on, which the loan_id index would answer by reading every
    # payment of the chunk's loans. Partial: most payments are never reversed.
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.create_index('ix_payment_reversed_on', ['reversed_on'], unique=False, postgresql_where=sa.text(REVERSED), sqlite_where=sa.text(REVERSED))


def downgrade() -> None:
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.drop_index('ix_payment_reversed_on', postgresql_where=sa.text(REVERSED), sqlite_where=sa.text(REVERSED))
