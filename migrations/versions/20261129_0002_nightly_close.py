"""nightly close

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 03:13:09.859359
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('close_run',
    sa.Column('as_of', sa.Date(), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.Column('steps', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('as_of', name=op.f('pk_close_run'))
    )
    with op.batch_alter_table('close_run', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_close_run_status'), ['status'], unique=False)

    with op.batch_alter_table('loan_installment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('late_fee_assessed_on', sa.Date(), nullable=True))
        batch_op.add_column(sa.Column('reminded_on', sa.Date(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('loan_installment', schema=None) as batch_op:
        batch_op.drop_column('reminded_on')
        batch_op.drop_column('late_fee_assessed_on')

    with op.batch_alter_table('close_run', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_close_run_status'))

    op.drop_table('close_run')
