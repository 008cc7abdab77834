"""The ledger: immutable money movements, and the sums that balances must agree with."""

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.ledger.models import LedgerTransaction, TransactionKind


async def net_payments_minor(session: AsyncSession, loan_id: str) -> int:
    """Payments received on the loan less those reversed."""
    signed = case(
        (LedgerTransaction.kind == TransactionKind.PAYMENT, LedgerTransaction.amount_minor),
        (LedgerTransaction.kind == TransactionKind.REVERSAL, -LedgerTransaction.amount_minor),
        else_=0,
    )
    total = await session.scalar(
        select(func.coalesce(func.sum(signed), 0)).where(LedgerTransaction.loan_id == loan_id)
    )
    return int(total or 0)
