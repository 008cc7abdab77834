"""loan.flags_deferred: a loan booked past due (a book brought in) has its flags, and those of
its payments, reversals and relief, wait for the next close or risk run; evaluated after its
first imported payment, the arrears still to load cut the borrower's limit. Loans past due
that no close or run evaluated since their booking are marked

Revision ID: 0036
Revises: 0035
Create Date: 2026-12-06 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0036'
down_revision: str | None = '0035'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('loan', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('flags_deferred', sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.create_index(
            'ix_loan_flags_deferred', ['id'], unique=False,
            postgresql_where=sa.text('flags_deferred'), sqlite_where=sa.text('flags_deferred'),
        )
    # Open loans past due that no close or risk run has evaluated since their booking: booked
    # past due, their import may still be under way.
    op.execute(
        "UPDATE loan SET flags_deferred = true WHERE days_past_due > 0 "
        "AND status IN ('active', 'delinquent', 'defaulted', 'charged_off', 'restructured') "
        "AND NOT EXISTS (SELECT 1 FROM close_run c WHERE c.status = 'succeeded' "
        "AND c.started_at > loan.created_at) "
        "AND NOT EXISTS (SELECT 1 FROM risk_run r WHERE r.status = 'succeeded' "
        "AND r.started_at > loan.created_at)"
    )


def downgrade() -> None:
    with op.batch_alter_table('loan', schema=None) as batch_op:
        batch_op.drop_index(
            'ix_loan_flags_deferred',
            postgresql_where=sa.text('flags_deferred'), sqlite_where=sa.text('flags_deferred'),
        )
        batch_op.drop_column('flags_deferred')
