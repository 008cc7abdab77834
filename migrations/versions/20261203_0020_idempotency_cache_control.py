"""idempotency_record.cache_control: a replay keeps the Cache-Control of the response it
replays (no-store on those that showed a secret)

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03 21:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0020'
down_revision: str | None = '0019'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: responses stored before this revision are replayed without the header, as
    # they were; they are purged within the retention period.
    with op.batch_alter_table('idempotency_record', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cache_control', sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('idempotency_record', schema=None) as batch_op:
        batch_op.drop_column('cache_control')
