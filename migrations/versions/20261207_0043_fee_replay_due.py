"""fee_replay_due: the open loans an older release charged late fees on several installments,
which it may have pyramided; the next close replays each once (app.close.models.FeeReplayDue)

Revision ID: 0043
Revises: 0042
Create Date: 2026-12-07 10:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0043'
down_revision: str | None = '0042'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN_STATUSES = "'active', 'delinquent', 'defaulted', 'charged_off', 'restructured'"


def upgrade() -> None:
    op.create_table(
        'fee_replay_due',
        sa.Column('loan_id', sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint('loan_id'),
    )
    # A fee is pyramided only on top of an older one: loans with one late fee need no replay.
    op.execute(
        "INSERT INTO fee_replay_due (loan_id) "
        "SELECT i.loan_id FROM loan_installment i JOIN loan l ON l.id = i.loan_id "
        f"WHERE i.late_fees_minor > 0 AND l.status IN ({OPEN_STATUSES}) "
        "GROUP BY i.loan_id HAVING COUNT(*) > 1"
    )


def downgrade() -> None:
    op.drop_table('fee_replay_due')
