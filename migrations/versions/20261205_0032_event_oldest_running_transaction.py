"""event.oldest_running_transaction_id: the oldest transaction still running when the event
was written (PostgreSQL); a subscriber resuming after a webhook's event missed events of an
older transaction that committed after it

Revision ID: 0032
Revises: 0031
Create Date: 2026-12-05 23:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0032'
down_revision: str | None = '0031'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Null on rows written before (and on SQLite): read as the event's own transaction.
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('oldest_running_transaction_id', sa.BigInteger(), nullable=True)
        )
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(
            "ALTER TABLE event ALTER COLUMN oldest_running_transaction_id "
            "SET DEFAULT (pg_snapshot_xmin(pg_current_snapshot())::text)::bigint"
        )


def downgrade() -> None:
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_column('oldest_running_transaction_id')
