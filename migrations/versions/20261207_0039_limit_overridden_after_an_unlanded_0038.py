"""borrower.limit_overridden on a database an unlanded revision 0038 migrated. Three commits
of the thirty-fourth session (5278d26 to b88234b) had a different 0038, a data-only one its
session withdrew; a database one of them migrated is stamped 0038, so the 0038 that adds
this column never ran there, and every read of a borrower failed (a tester's). The column is
added where it is missing; its withdrawn marks are judgements of no fee, which the close
reads so too (no change to undo).

Revision ID: 0039
Revises: 0038
Create Date: 2026-12-07 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0039'
down_revision: str | None = '0038'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    columns = {column['name'] for column in sa.inspect(op.get_bind()).get_columns('borrower')}
    if 'limit_overridden' in columns:
        return
    with op.batch_alter_table('borrower', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('limit_overridden', sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    """The column stays: 0038's downgrade drops it."""
