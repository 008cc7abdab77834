"""grades and limits

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 04:29:53.182357
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('borrower', schema=None) as batch_op:
        batch_op.add_column(sa.Column('risk_reasons', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('limit_before_cut_minor', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('limit_changed_on', sa.Date(), nullable=True))

    with op.batch_alter_table('loan', schema=None) as batch_op:
        batch_op.add_column(sa.Column('risk_score', sa.Integer(), nullable=False, server_default='1000'))
        batch_op.add_column(sa.Column('risk_grade', sa.String(length=1), nullable=False, server_default='A'))



def downgrade() -> None:
    with op.batch_alter_table('loan', schema=None) as batch_op:
        batch_op.drop_column('risk_grade')
        batch_op.drop_column('risk_score')

    with op.batch_alter_table('borrower', schema=None) as batch_op:
        batch_op.drop_column('limit_changed_on')
        batch_op.drop_column('limit_before_cut_minor')
        batch_op.drop_column('risk_reasons')

