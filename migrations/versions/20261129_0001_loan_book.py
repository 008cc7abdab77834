"""loan book

Revision ID: 0001
Revises:
Create Date: 2026-11-29 03:09:22.630604
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('event',
    sa.Column('position', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), sa.Identity(always=False), nullable=False),
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('loan_id', sa.String(length=40), nullable=True),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('position', name=op.f('pk_event')),
    sa.UniqueConstraint('id', name=op.f('uq_event_id'))
    )
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_event_loan_id'), ['loan_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_event_type'), ['type'], unique=False)

    op.create_table('idempotency_record',
    sa.Column('scope', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('content_type', sa.String(length=100), nullable=True),
    sa.Column('body', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('scope', 'key', name=op.f('pk_idempotency_record'))
    )
    with op.batch_alter_table('idempotency_record', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotency_record_created_at'), ['created_at'], unique=False)

    op.create_table('merchant',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_merchant'))
    )
    op.create_table('product',
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('annual_interest_rate', sa.BigInteger(), nullable=False),
    sa.Column('amortization', sa.String(length=20), nullable=False),
    sa.Column('term_options', sa.JSON(), nullable=False),
    sa.Column('rounding', sa.String(length=10), nullable=False),
    sa.Column('installment_multiple_of_minor', sa.BigInteger(), nullable=True),
    sa.Column('grace_days', sa.Integer(), nullable=False),
    sa.Column('late_fee_kind', sa.String(length=10), nullable=True),
    sa.Column('late_fee_amount_minor', sa.BigInteger(), nullable=True),
    sa.Column('late_fee_percent', sa.BigInteger(), nullable=True),
    sa.Column('late_fee_cap_minor', sa.BigInteger(), nullable=True),
    sa.Column('origination_fee_kind', sa.String(length=10), nullable=True),
    sa.Column('origination_fee_amount_minor', sa.BigInteger(), nullable=True),
    sa.Column('origination_fee_percent', sa.BigInteger(), nullable=True),
    sa.Column('origination_fee_collection', sa.String(length=10), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('code', name=op.f('pk_product'))
    )
    op.create_table('api_key',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('merchant_id', sa.String(length=40), nullable=True),
    sa.Column('description', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'], name=op.f('fk_api_key_merchant_id_merchant')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_key')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_key_key_hash'))
    )
    op.create_table('borrower',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('merchant_id', sa.String(length=40), nullable=False),
    sa.Column('external_id', sa.String(length=100), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('phone', sa.String(length=32), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('monthly_income_minor', sa.BigInteger(), nullable=True),
    sa.Column('credit_limit_minor', sa.BigInteger(), nullable=False),
    sa.Column('risk_grade', sa.String(length=1), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'], name=op.f('fk_borrower_merchant_id_merchant')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_borrower')),
    sa.UniqueConstraint('merchant_id', 'external_id', name=op.f('uq_borrower_merchant_id_external_id'))
    )
    with op.batch_alter_table('borrower', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_borrower_merchant_id'), ['merchant_id'], unique=False)

    op.create_table('loan',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('borrower_id', sa.String(length=40), nullable=False),
    sa.Column('merchant_id', sa.String(length=40), nullable=False),
    sa.Column('product_code', sa.String(length=64), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('principal_minor', sa.BigInteger(), nullable=False),
    sa.Column('annual_interest_rate', sa.BigInteger(), nullable=False),
    sa.Column('amortization', sa.String(length=20), nullable=False),
    sa.Column('rounding', sa.String(length=10), nullable=False),
    sa.Column('term', sa.Integer(), nullable=False),
    sa.Column('disbursed_on', sa.Date(), nullable=False),
    sa.Column('first_due_date', sa.Date(), nullable=False),
    sa.Column('merchant_order_ref', sa.String(length=100), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('principal_outstanding_minor', sa.BigInteger(), nullable=False),
    sa.Column('credit_balance_minor', sa.BigInteger(), nullable=False),
    sa.Column('refund_due_minor', sa.BigInteger(), nullable=False),
    sa.Column('days_past_due', sa.Integer(), nullable=False),
    sa.Column('bucket', sa.String(length=8), nullable=False),
    sa.Column('delinquency_as_of', sa.Date(), nullable=True),
    sa.Column('paid_off_on', sa.Date(), nullable=True),
    sa.Column('cancelled_on', sa.Date(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['borrower_id'], ['borrower.id'], name=op.f('fk_loan_borrower_id_borrower')),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'], name=op.f('fk_loan_merchant_id_merchant')),
    sa.ForeignKeyConstraint(['product_code'], ['product.code'], name=op.f('fk_loan_product_code_product')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_loan')),
    sa.UniqueConstraint('merchant_id', 'merchant_order_ref', name=op.f('uq_loan_merchant_id_merchant_order_ref'))
    )
    with op.batch_alter_table('loan', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_loan_borrower_id'), ['borrower_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_loan_merchant_id'), ['merchant_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_loan_status'), ['status'], unique=False)

    op.create_table('loan_installment',
    sa.Column('loan_id', sa.String(length=40), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('due_date', sa.Date(), nullable=False),
    sa.Column('principal_minor', sa.BigInteger(), nullable=False),
    sa.Column('interest_minor', sa.BigInteger(), nullable=False),
    sa.Column('fees_minor', sa.BigInteger(), nullable=False),
    sa.Column('late_fees_minor', sa.BigInteger(), nullable=False),
    sa.Column('paid_principal_minor', sa.BigInteger(), nullable=False),
    sa.Column('paid_interest_minor', sa.BigInteger(), nullable=False),
    sa.Column('paid_fees_minor', sa.BigInteger(), nullable=False),
    sa.Column('interest_waived_minor', sa.BigInteger(), nullable=False),
    sa.Column('fees_waived_minor', sa.BigInteger(), nullable=False),
    sa.Column('paid_on', sa.Date(), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.ForeignKeyConstraint(['loan_id'], ['loan.id'], name=op.f('fk_loan_installment_loan_id_loan')),
    sa.PrimaryKeyConstraint('loan_id', 'seq', name=op.f('pk_loan_installment'))
    )
    with op.batch_alter_table('loan_installment', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_loan_installment_due_date'), ['due_date'], unique=False)

    op.create_table('payment',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('loan_id', sa.String(length=40), nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('received_on', sa.Date(), nullable=False),
    sa.Column('channel', sa.String(length=32), nullable=False),
    sa.Column('external_ref', sa.String(length=100), nullable=True),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('reversal_reason', sa.String(length=12), nullable=True),
    sa.Column('reversed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['loan_id'], ['loan.id'], name=op.f('fk_payment_loan_id_loan')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payment')),
    sa.UniqueConstraint('loan_id', 'external_ref', name=op.f('uq_payment_loan_id_external_ref'))
    )
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payment_loan_id'), ['loan_id'], unique=False)

    op.create_table('ledger_transaction',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), sa.Identity(always=False), nullable=False),
    sa.Column('loan_id', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('effective_on', sa.Date(), nullable=False),
    sa.Column('payment_id', sa.String(length=40), nullable=True),
    sa.Column('installment_seq', sa.Integer(), nullable=True),
    sa.Column('note', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['loan_id'], ['loan.id'], name=op.f('fk_ledger_transaction_loan_id_loan')),
    sa.ForeignKeyConstraint(['payment_id'], ['payment.id'], name=op.f('fk_ledger_transaction_payment_id_payment')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_transaction'))
    )
    with op.batch_alter_table('ledger_transaction', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ledger_transaction_loan_id'), ['loan_id'], unique=False)

    op.create_table('payment_allocation',
    sa.Column('payment_id', sa.String(length=40), nullable=False),
    sa.Column('installment_seq', sa.Integer(), nullable=False),
    sa.Column('loan_id', sa.String(length=40), nullable=False),
    sa.Column('fees_minor', sa.BigInteger(), nullable=False),
    sa.Column('interest_minor', sa.BigInteger(), nullable=False),
    sa.Column('principal_minor', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['loan_id'], ['loan.id'], name=op.f('fk_payment_allocation_loan_id_loan')),
    sa.ForeignKeyConstraint(['payment_id'], ['payment.id'], name=op.f('fk_payment_allocation_payment_id_payment')),
    sa.PrimaryKeyConstraint('payment_id', 'installment_seq', name=op.f('pk_payment_allocation'))
    )
    with op.batch_alter_table('payment_allocation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payment_allocation_loan_id'), ['loan_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('payment_allocation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payment_allocation_loan_id'))

    op.drop_table('payment_allocation')
    with op.batch_alter_table('ledger_transaction', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ledger_transaction_loan_id'))

    op.drop_table('ledger_transaction')
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payment_loan_id'))

    op.drop_table('payment')
    with op.batch_alter_table('loan_installment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_loan_installment_due_date'))

    op.drop_table('loan_installment')
    with op.batch_alter_table('loan', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_loan_status'))
        batch_op.drop_index(batch_op.f('ix_loan_merchant_id'))
        batch_op.drop_index(batch_op.f('ix_loan_borrower_id'))

    op.drop_table('loan')
    with op.batch_alter_table('borrower', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_borrower_merchant_id'))

    op.drop_table('borrower')
    op.drop_table('api_key')
    op.drop_table('product')
    op.drop_table('merchant')
    with op.batch_alter_table('idempotency_record', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotency_record_created_at'))

    op.drop_table('idempotency_record')
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_event_type'))
        batch_op.drop_index(batch_op.f('ix_event_loan_id'))

    op.drop_table('event')
