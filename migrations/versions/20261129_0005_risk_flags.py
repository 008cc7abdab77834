"""risk flags

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 04:00:37.723794
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('risk_rules_version',
    sa.Column('version', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('rules', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=40), nullable=True),
    sa.PrimaryKeyConstraint('version', name=op.f('pk_risk_rules_version'))
    )
    op.create_table('risk_flag',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('loan_id', sa.String(length=40), nullable=False),
    sa.Column('borrower_id', sa.String(length=40), nullable=False),
    sa.Column('code', sa.String(length=40), nullable=False),
    sa.Column('severity', sa.String(length=10), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('raised_on', sa.Date(), nullable=False),
    sa.Column('cleared_on', sa.Date(), nullable=True),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.Column('rules_version', sa.Integer(), nullable=False),
    sa.Column('acknowledged', sa.Boolean(), nullable=False),
    sa.Column('acknowledged_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('acknowledged_note', sa.String(length=500), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['borrower_id'], ['borrower.id'], name=op.f('fk_risk_flag_borrower_id_borrower')),
    sa.ForeignKeyConstraint(['loan_id'], ['loan.id'], name=op.f('fk_risk_flag_loan_id_loan')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_risk_flag'))
    )
    with op.batch_alter_table('risk_flag', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_risk_flag_borrower_id'), ['borrower_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_risk_flag_loan_id'), ['loan_id'], unique=False)
        batch_op.create_index('ix_risk_flag_status_code', ['status', 'code'], unique=False)
        batch_op.create_index('uq_risk_flag_open', ['loan_id', 'code'], unique=True, postgresql_where=sa.text("status = 'open'"), sqlite_where=sa.text("status = 'open'"))

    with op.batch_alter_table('loan', schema=None) as batch_op:
        batch_op.add_column(sa.Column('previous_bucket', sa.String(length=8), nullable=False, server_default='current'))
        batch_op.add_column(sa.Column('cured_on', sa.Date(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('loan', schema=None) as batch_op:
        batch_op.drop_column('cured_on')
        batch_op.drop_column('previous_bucket')

    with op.batch_alter_table('risk_flag', schema=None) as batch_op:
        batch_op.drop_index('uq_risk_flag_open', postgresql_where=sa.text("status = 'open'"), sqlite_where=sa.text("status = 'open'"))
        batch_op.drop_index('ix_risk_flag_status_code')
        batch_op.drop_index(batch_op.f('ix_risk_flag_loan_id'))
        batch_op.drop_index(batch_op.f('ix_risk_flag_borrower_id'))

    op.drop_table('risk_flag')
    op.drop_table('risk_rules_version')
