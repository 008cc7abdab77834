"""restructures; a repayment plan's installments are promises

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 19:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = "status = 'open'"
OPEN_STANDALONE = "status = 'open' AND restructure_id IS NULL"


def upgrade() -> None:
    op.create_table('restructure',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('loan_id', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('terms', sa.JSON(), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('requested_by', sa.String(length=40), nullable=True),
    sa.Column('requested_on', sa.Date(), nullable=False),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_by', sa.String(length=40), nullable=True),
    sa.Column('decided_on', sa.Date(), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decision_note', sa.String(length=500), nullable=True),
    sa.ForeignKeyConstraint(['loan_id'], ['loan.id'], name=op.f('fk_restructure_loan_id_loan')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_restructure'))
    )
    with op.batch_alter_table('restructure', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_restructure_loan_id'), ['loan_id'], unique=False)

    with op.batch_alter_table('promise', schema=None) as batch_op:
        batch_op.add_column(sa.Column('restructure_id', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('plan_seq', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_promise_restructure_id'), ['restructure_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_promise_restructure_id_restructure'), 'restructure', ['restructure_id'], ['id'])
        # A plan's installments are open side by side: the one-open-promise rule is for the
        # promises taken one at a time.
        batch_op.drop_index('uq_promise_open', postgresql_where=sa.text(OPEN), sqlite_where=sa.text(OPEN))
        batch_op.create_index('uq_promise_open', ['loan_id'], unique=True, postgresql_where=sa.text(OPEN_STANDALONE), sqlite_where=sa.text(OPEN_STANDALONE))


def downgrade() -> None:
    op.execute("DELETE FROM promise WHERE restructure_id IS NOT NULL")
    with op.batch_alter_table('promise', schema=None) as batch_op:
        batch_op.drop_index('uq_promise_open', postgresql_where=sa.text(OPEN_STANDALONE), sqlite_where=sa.text(OPEN_STANDALONE))
        batch_op.create_index('uq_promise_open', ['loan_id'], unique=True, postgresql_where=sa.text(OPEN), sqlite_where=sa.text(OPEN))
        batch_op.drop_constraint(batch_op.f('fk_promise_restructure_id_restructure'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_promise_restructure_id'))
        batch_op.drop_column('plan_seq')
        batch_op.drop_column('restructure_id')

    with op.batch_alter_table('restructure', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_restructure_loan_id'))

    op.drop_table('restructure')
