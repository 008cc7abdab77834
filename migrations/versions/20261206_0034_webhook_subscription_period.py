"""webhook_subscription_period: when an endpoint took up and dropped each pattern, so that
recover sends the events it was subscribed to when they were written (it matched today's
patterns, and sent events written before a type was subscribed)

Revision ID: 0034
Revises: 0033
Create Date: 2026-12-06 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0034'
down_revision: str | None = '0033'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'webhook_subscription_period',
        sa.Column('endpoint_id', sa.String(length=40), nullable=False),
        sa.Column('pattern', sa.String(length=64), nullable=False),
        sa.Column('subscribed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('unsubscribed_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['endpoint_id'], ['webhook_endpoint.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('endpoint_id', 'pattern', 'subscribed_at'),
    )
    # What is known of the past: each pattern held since its endpoint was created.
    op.execute(
        'INSERT INTO webhook_subscription_period (endpoint_id, pattern, subscribed_at) '
        'SELECT s.endpoint_id, s.pattern, e.created_at FROM webhook_subscription s '
        'JOIN webhook_endpoint e ON e.id = s.endpoint_id'
    )


def downgrade() -> None:
    op.drop_table('webhook_subscription_period')
