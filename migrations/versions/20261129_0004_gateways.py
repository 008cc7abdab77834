"""gateways

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 03:49:18.507700
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('gateway',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('secret', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_gateway'))
    )
    op.create_table('inbound_notification',
    sa.Column('gateway', sa.String(length=64), nullable=False),
    sa.Column('webhook_id', sa.String(length=255), nullable=False),
    sa.Column('type', sa.String(length=40), nullable=False),
    sa.Column('result', sa.JSON(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['gateway'], ['gateway.name'], name=op.f('fk_inbound_notification_gateway_gateway')),
    sa.PrimaryKeyConstraint('gateway', 'webhook_id', name=op.f('pk_inbound_notification'))
    )
    op.create_table('failed_debit',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('loan_id', sa.String(length=40), nullable=False),
    sa.Column('gateway', sa.String(length=64), nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('attempted_on', sa.Date(), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=True),
    sa.Column('external_ref', sa.String(length=100), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['gateway'], ['gateway.name'], name=op.f('fk_failed_debit_gateway_gateway')),
    sa.ForeignKeyConstraint(['loan_id'], ['loan.id'], name=op.f('fk_failed_debit_loan_id_loan')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_failed_debit'))
    )
    with op.batch_alter_table('failed_debit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_failed_debit_loan_id'), ['loan_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('failed_debit', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_failed_debit_loan_id'))

    op.drop_table('failed_debit')
    op.drop_table('inbound_notification')
    op.drop_table('gateway')
