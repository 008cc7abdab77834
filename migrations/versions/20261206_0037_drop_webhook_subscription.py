"""Drop webhook_subscription: an endpoint's patterns now are its open webhook_subscription_period
rows (unsubscribed_at null), which held the same thing since 0034, written beside it

Revision ID: 0037
Revises: 0036
Create Date: 2026-12-06 02:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0037'
down_revision: str | None = '0036'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_table('webhook_subscription')


def downgrade() -> None:
    op.create_table(
        'webhook_subscription',
        sa.Column('endpoint_id', sa.String(length=40), nullable=False),
        sa.Column('pattern', sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ['endpoint_id'], ['webhook_endpoint.id'],
            name=op.f('fk_webhook_subscription_endpoint_id_webhook_endpoint'), ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('endpoint_id', 'pattern', name=op.f('pk_webhook_subscription')),
    )
    op.execute(
        'INSERT INTO webhook_subscription (endpoint_id, pattern) SELECT endpoint_id, pattern '
        'FROM webhook_subscription_period WHERE unsubscribed_at IS NULL'
    )
