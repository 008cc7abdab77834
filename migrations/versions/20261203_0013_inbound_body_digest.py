"""inbound_notification.body_sha256: a webhook-id reused for another body is refused

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: notifications processed before this revision have no digest to compare.
    with op.batch_alter_table('inbound_notification', schema=None) as batch_op:
        batch_op.add_column(sa.Column('body_sha256', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('inbound_notification', schema=None) as batch_op:
        batch_op.drop_column('body_sha256')
