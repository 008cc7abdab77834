"""Installments an older release's close judged to owe no late fee stay judged. Until the
twenty-seventh session a close counted the payments received by its own date, not by the
installment's last day of grace: an installment settled after its grace, before that close,
owed nothing. The current close judges any uncharged installment by its grace, so the first
close after an upgrade charged such installments, months late, and made them overdue again
(a tester's). Each one settled after its grace, with no fee, whose grace a close since the
loan's booking has passed, is marked assessed on its last day of grace with no fee; a replay
that leaves it owing again (a reversal) clears the mark, so the next close judges it again.

Revision ID: 0038
Revises: 0037
Create Date: 2026-12-06 03:15:00
"""

from collections.abc import Sequence

from alembic import op


revision: str = '0038'
down_revision: str | None = '0037'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        last_day_of_grace = 'loan_installment.due_date + product.grace_days'
    else:
        last_day_of_grace = "date(loan_installment.due_date, '+' || product.grace_days || ' days')"
    op.execute(
        f"UPDATE loan_installment SET late_fee_assessed_on = ("
        f"SELECT {last_day_of_grace} FROM loan JOIN product ON product.code = loan.product_code "
        "WHERE loan.id = loan_installment.loan_id) "
        "WHERE late_fee_assessed_on IS NULL AND late_fees_minor = 0 AND paid_on IS NOT NULL "
        "AND EXISTS (SELECT 1 FROM loan JOIN product ON product.code = loan.product_code "
        "WHERE loan.id = loan_installment.loan_id AND product.late_fee_kind IS NOT NULL "
        f"AND loan_installment.paid_on > {last_day_of_grace} "
        "AND EXISTS (SELECT 1 FROM close_run WHERE close_run.status = 'succeeded' "
        f"AND close_run.as_of > {last_day_of_grace} "
        "AND close_run.started_at > loan.created_at))"
    )


def downgrade() -> None:
    """The marks stay: each is an assessment of no fee, which the older schema reads so too."""
