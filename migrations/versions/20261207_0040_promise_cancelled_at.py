"""promise.cancelled_at: the instant a promise was cancelled. A cancelled promise counts only
the money recorded before it; cut by its cancellation's day, a payment received that day but
recorded after could stand in for a bounced one it had counted, taken from a promise made
since. Promises cancelled before this revision have none and are still cut by the day.

Revision ID: 0040
Revises: 0039
Create Date: 2026-12-07 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0040'
down_revision: str | None = '0039'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('promise', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('promise', schema=None) as batch_op:
        batch_op.drop_column('cancelled_at')
