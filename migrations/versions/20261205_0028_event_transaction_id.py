"""event.transaction_id: the writing transaction's id on PostgreSQL, so that the events feed
lists events in commit order; a position is drawn at insert, and a reader resuming after the
last position it saw skipped an event that committed after later ones

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-05 19:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0028'
down_revision: str | None = '0027'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('transaction_id', sa.BigInteger(), server_default=sa.text('0'),
                      nullable=False)
        )
        batch_op.create_index('ix_event_feed_order', ['transaction_id', 'position'], unique=False)
    if op.get_bind().dialect.name == 'postgresql':
        # Rows written before keep 0: their transactions have all committed.
        op.execute(
            "ALTER TABLE event ALTER COLUMN transaction_id "
            "SET DEFAULT (pg_current_xact_id()::text)::bigint"
        )


def downgrade() -> None:
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_index('ix_event_feed_order')
        batch_op.drop_column('transaction_id')
