"""failed_debit: one row per loan and external_ref, so a resent failure counts once

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 15:00:00
"""

from collections.abc import Sequence

from alembic import op


revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('failed_debit', schema=None) as batch_op:
        batch_op.create_unique_constraint(
            batch_op.f('uq_failed_debit_loan_id_external_ref'), ['loan_id', 'external_ref']
        )


def downgrade() -> None:
    with op.batch_alter_table('failed_debit', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_failed_debit_loan_id_external_ref'), type_='unique')
