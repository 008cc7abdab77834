"""loan_installment.settled_on: the day an installment stopped counting as missed (paid, or
within the arrears tolerance), which late_drift counts lateness to; the next close replays once
the open loans whose installments settled late over several payments, to date it

Revision ID: 0044
Revises: 0043
Create Date: 2026-12-08 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0044'
down_revision: str | None = '0043'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN_STATUSES = "'active', 'delinquent', 'defaulted', 'charged_off', 'restructured'"


SETTLED_WHEN_PAID = "UPDATE loan_installment SET settled_on = paid_on"
# The installments that may have come within the tolerance on another day than their
# paid_on: one paid in part and not in full (maybe within it, and so settled, a re-verifier's),
# and one paid late in more than one payment (maybe within it before it was paid; one paid in
# time is not late however it is dated).
REPLAY_SETTLED_IN_PARTS = (
    "INSERT INTO fee_replay_due (loan_id) "
    "SELECT DISTINCT i.loan_id FROM loan_installment i JOIN loan l ON l.id = i.loan_id "
    f"WHERE l.status IN ({OPEN_STATUSES}) AND ("
    "  (i.paid_on IS NULL AND i.paid_principal_minor + i.paid_interest_minor"
    "   + i.paid_fees_minor > 0)"
    "  OR (i.paid_on > i.due_date"
    "      AND (SELECT COUNT(DISTINCT a.payment_id) FROM payment_allocation a"
    "           WHERE a.loan_id = i.loan_id AND a.installment_seq = i.seq) > 1)"
    ") AND i.loan_id NOT IN (SELECT loan_id FROM fee_replay_due)"
)


def upgrade() -> None:
    op.add_column('loan_installment', sa.Column('settled_on', sa.Date(), nullable=True))
    op.execute(SETTLED_WHEN_PAID)
    op.execute(REPLAY_SETTLED_IN_PARTS)


def downgrade() -> None:
    with op.batch_alter_table('loan_installment') as batch_op:
        batch_op.drop_column('settled_on')
