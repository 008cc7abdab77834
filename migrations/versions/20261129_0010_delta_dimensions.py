"""portfolio deltas carry their loan's merchant, product and currency

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 08:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('portfolio_delta', schema=None) as batch_op:
        batch_op.add_column(sa.Column('merchant_id', sa.String(length=40), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('product_code', sa.String(length=40), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('currency', sa.String(length=3), nullable=False, server_default=''))
    # Deltas written before this revision take their loan's dimensions.
    for column in ('merchant_id', 'product_code', 'currency'):
        op.execute(
            f"UPDATE portfolio_delta SET {column} = "
            f"(SELECT loan.{column} FROM loan WHERE loan.id = portfolio_delta.loan_id)"
        )


def downgrade() -> None:
    with op.batch_alter_table('portfolio_delta', schema=None) as batch_op:
        batch_op.drop_column('currency')
        batch_op.drop_column('product_code')
        batch_op.drop_column('merchant_id')
