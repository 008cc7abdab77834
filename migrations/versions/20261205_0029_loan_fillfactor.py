"""loan: fillfactor 80 on PostgreSQL. The nightly close rewrites every open loan's row (days
past due); with room left on its page the new version is a heap-only tuple, which adds no
index entries and is pruned on the page without waiting for VACUUM. Full pages made each
night add an entry to every loan index: with autovacuum behind (or off), the status index
of a 2,008-loan book held 193,510 entries after 85 closes, and the risk step, which looks up
a borrower's other loans through it, went from 0.5 s to 10-15 s a night

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-05 19:30:00
"""

from collections.abc import Sequence

from alembic import op


revision: str = '0029'
down_revision: str | None = '0028'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Pages written from now on keep the room; existing ones get it when rewritten (VACUUM
    # FULL, or pg_repack on a live book).
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE loan SET (fillfactor = 80)')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE loan RESET (fillfactor)')
