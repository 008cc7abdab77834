"""borrower.limit_overridden: an admin set the limit since the grade last fell to D or E, so
the borrower is lent up to it even at D or E, to whom nothing more is lent otherwise. Every
borrower starts without one: an override made before this revision is not known as such

Revision ID: 0038
Revises: 0037
Create Date: 2026-12-06 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0038'
down_revision: str | None = '0037'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('borrower', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('limit_overridden', sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table('borrower', schema=None) as batch_op:
        batch_op.drop_column('limit_overridden')
