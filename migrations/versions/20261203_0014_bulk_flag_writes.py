"""Cheaper bulk flag writes: risk_flag.borrower_id without its own foreign key (it is a copy of
the loan's borrower, which the loan's key already guarantees), and the portfolio's flag deltas
summed per segment, so portfolio_delta.loan_id is only set for a loan's own moves

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("risk_flag", schema=None) as batch_op:
        batch_op.drop_constraint("fk_risk_flag_borrower_id_borrower", type_="foreignkey")
    with op.batch_alter_table("portfolio_delta", schema=None) as batch_op:
        batch_op.alter_column("loan_id", existing_type=sa.String(length=40), nullable=True)


def downgrade() -> None:
    # Flag deltas carry no loan: the rebase at the next close drops every delta anyway.
    op.execute("DELETE FROM portfolio_delta WHERE loan_id IS NULL")
    with op.batch_alter_table("portfolio_delta", schema=None) as batch_op:
        batch_op.alter_column("loan_id", existing_type=sa.String(length=40), nullable=False)
    with op.batch_alter_table("risk_flag", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_risk_flag_borrower_id_borrower", "borrower", ["borrower_id"], ["id"]
        )
