"""promises: drop uq_promise_open, a reversal may reopen a kept promise beside a newer one

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-03 21:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0021'
down_revision: str | None = '0020'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN_STANDALONE = "status = 'open' AND restructure_id IS NULL"


def upgrade() -> None:
    # A promise is still taken only while none is open (checked under the loan's lock), but a
    # reversal that takes back the money which kept one reopens it beside the promise taken
    # after it: two open promises, each broken only after its own date.
    with op.batch_alter_table('promise', schema=None) as batch_op:
        batch_op.drop_index('uq_promise_open', postgresql_where=sa.text(OPEN_STANDALONE), sqlite_where=sa.text(OPEN_STANDALONE))


def downgrade() -> None:
    # Fails while a loan has two open promises taken one at a time: settle one first.
    with op.batch_alter_table('promise', schema=None) as batch_op:
        batch_op.create_index('uq_promise_open', ['loan_id'], unique=True, postgresql_where=sa.text(OPEN_STANDALONE), sqlite_where=sa.text(OPEN_STANDALONE))
