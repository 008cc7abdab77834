"""loan.relapsed_on and loan.relapse_cured_on: the spell cure_relapse looks at, kept while the
loan stays past due; worked out from today's days past due, it moved when an older
installment was paid and was lost when a reversal undid a cure

Revision ID: 0031
Revises: 0030
Create Date: 2026-12-05 23:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0031'
down_revision: str | None = '0030'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('loan', schema=None) as batch_op:
        batch_op.add_column(sa.Column('relapsed_on', sa.Date(), nullable=True))
        batch_op.add_column(sa.Column('relapse_cured_on', sa.Date(), nullable=True))
    # A loan past due after a cure: its spell as the rule read it until now, from its days
    # past due (the first day past due is the day after the oldest missed due date).
    if op.get_bind().dialect.name == 'postgresql':
        first_day = 'delinquency_as_of - days_past_due + 1'
    else:
        first_day = "date(delinquency_as_of, printf('%+d days', 1 - days_past_due))"
    op.execute(
        f'UPDATE loan SET relapsed_on = {first_day}, relapse_cured_on = cured_on '
        'WHERE days_past_due > 0 AND delinquency_as_of IS NOT NULL AND cured_on IS NOT NULL '
        f'AND {first_day} > cured_on'
    )


def downgrade() -> None:
    with op.batch_alter_table('loan', schema=None) as batch_op:
        batch_op.drop_column('relapse_cured_on')
        batch_op.drop_column('relapsed_on')
