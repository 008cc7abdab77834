"""loan_snapshot_day: the dates whose snapshot the close took, with open loans or none, so that
roll rates compare a close of a book with no open loan (it left no snapshot row, and was
refused as "no close snapshot"); reading them no longer scans every snapshot row

Revision ID: 0035
Revises: 0034
Create Date: 2026-12-06 01:30:00
"""

from collections.abc import Sequence
from datetime import date, timedelta

import sqlalchemy as sa
from alembic import op


revision: str = '0035'
down_revision: str | None = '0034'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'loan_snapshot_day',
        sa.Column('as_of', sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint('as_of'),
    )
    op.execute('INSERT INTO loan_snapshot_day (as_of) SELECT DISTINCT as_of FROM loan_snapshot')
    # The closes that found no open loan left no row: a succeeded close with none was such a
    # close, unless the close pruned its snapshot since (older than the retention, 400 days by
    # default, and not its month's last). A month with no snapshot at all had none to prune.
    bind = op.get_bind()
    taken = {_day(d) for (d,) in bind.execute(sa.text('SELECT as_of FROM loan_snapshot_day'))}
    closed = [
        _day(d)
        for (d,) in bind.execute(sa.text("SELECT as_of FROM close_run WHERE status = 'succeeded'"))
    ]
    if not closed:
        return
    horizon = max(closed) - timedelta(days=DEFAULT_RETENTION_DAYS)
    months_taken = {(d.year, d.month) for d in taken}
    empty = [
        d for d in closed
        if d not in taken and (d >= horizon or (d.year, d.month) not in months_taken)
    ]
    if empty:
        op.bulk_insert(_days, [{'as_of': d} for d in empty])


DEFAULT_RETENTION_DAYS = 400
_days = sa.table('loan_snapshot_day', sa.column('as_of', sa.Date()))


def _day(value: date | str) -> date:
    """A date as the driver returns it (SQLite: its ISO text)."""
    return value if isinstance(value, date) else date.fromisoformat(value)


def downgrade() -> None:
    op.drop_table('loan_snapshot_day')
