"""payment.gateway: the gateway whose debit.succeeded recorded a payment, the only one that
may charge it back

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0018'
down_revision: str | None = '0017'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('gateway', sa.String(length=64), nullable=True))
        batch_op.create_foreign_key(
            op.f('fk_payment_gateway_gateway'), 'gateway', ['gateway'], ['name']
        )
    # Payments recorded by gateways before this revision: the notification that recorded one
    # kept the payment (its id) as its result.
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("UPDATE payment SET gateway = n.gateway FROM inbound_notification n "
                   "WHERE n.type = 'debit.succeeded' AND n.result->>'id' = payment.id "
                   "AND payment.channel = 'auto_debit'")
    else:
        op.execute("UPDATE payment SET gateway = (SELECT n.gateway FROM inbound_notification n "
                   "WHERE n.type = 'debit.succeeded' AND json_extract(n.result, '$.id') = "
                   "payment.id) WHERE channel = 'auto_debit'")


def downgrade() -> None:
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('fk_payment_gateway_gateway'), type_='foreignkey')
        batch_op.drop_column('gateway')
