"""portfolio_segment_cell: the last close's segments at their finest grain (merchant, product,
currency, origination month), so /v1/portfolio/segments answers within a merchant's or a
product's scope; filled by the next close

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-05 09:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0026'
down_revision: str | None = '0025'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('portfolio_segment_cell',
    sa.Column('as_of', sa.Date(), nullable=False),
    sa.Column('merchant_id', sa.String(length=40), nullable=False),
    sa.Column('product_code', sa.String(length=40), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('month', sa.String(length=7), nullable=False),
    sa.Column('loans', sa.BigInteger(), nullable=False),
    sa.Column('principal_minor', sa.BigInteger(), nullable=False),
    sa.Column('dpd_30_plus_loans', sa.BigInteger(), nullable=False),
    sa.Column('dpd_90_plus_loans', sa.BigInteger(), nullable=False),
    sa.Column('fpd_10_cohort', sa.BigInteger(), nullable=False),
    sa.Column('fpd_10_loans', sa.BigInteger(), nullable=False),
    sa.Column('fpd_30_cohort', sa.BigInteger(), nullable=False),
    sa.Column('fpd_30_loans', sa.BigInteger(), nullable=False),
    sa.Column('current_base', sa.BigInteger(), nullable=False),
    sa.Column('current_to_30_loans', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('merchant_id', 'product_code', 'currency', 'month', name=op.f('pk_portfolio_segment_cell'))
    )


def downgrade() -> None:
    op.drop_table('portfolio_segment_cell')
