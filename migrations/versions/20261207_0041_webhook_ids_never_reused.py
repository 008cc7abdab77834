"""webhook_delivery and webhook_attempt ids never reused on SQLite (AUTOINCREMENT), as a
PostgreSQL sequence's are not: a deleted endpoint's last delivery id went to the next
delivery, which a drain still holding the first took for it and left unsent for a minute

Revision ID: 0041
Revises: 0040
Create Date: 2026-12-07 04:10:00
"""

from collections.abc import Sequence

from alembic import op


revision: str = '0041'
down_revision: str | None = '0040'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _recreate(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return  # identity columns: never reused
    # Attempts first: recreating deliveries leaves their foreign key naming the table anew.
    for table in ('webhook_attempt', 'webhook_delivery'):
        with op.batch_alter_table(table, recreate='always',
                                  table_kwargs={'sqlite_autoincrement': autoincrement}):
            pass


def upgrade() -> None:
    _recreate(True)


def downgrade() -> None:
    _recreate(False)
