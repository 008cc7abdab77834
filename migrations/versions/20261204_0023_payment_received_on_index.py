"""payment: index received_on, the close reads the payments received after the date it closes

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-04 10:00:00
"""

from collections.abc import Sequence

from alembic import op


revision: str = '0023'
down_revision: str | None = '0022'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Each close step counts only the payments received by the date closed: it adds back the
    # allocations of the few received after it, found through this index.
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payment_received_on'), ['received_on'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payment_received_on'))
