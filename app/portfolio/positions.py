"""Live portfolio counts without scanning the book: base + deltas.

Every write that moves a loan between (status, bucket) positions, changes its principal, or
receives or reverses a payment appends a delta row in its own transaction (an ORM listener);
the risk engine's bulk statements append the deltas of the flags they open and close. The
set-based steps of the close update loans in SQL, not through the ORM, so the close ends
with a *rebase*: the base tables are recomputed from the loans, flags and
payments, and the deltas they already include are deleted, in one snapshot of the database.
A reader adds the base and the (few) deltas since.
"""

from collections import Counter
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import Table, delete, event, func, insert, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, UOWTransaction

from app.db import insert_rows
from app.loans.models import Loan
from app.payments.models import Payment, PaymentStatus
from app.portfolio.models import (
    PortfolioCollection,
    PortfolioDelta,
    PortfolioFlagCount,
    PortfolioPosition,
)
from app.products.models import Product
from app.risk.models import FlagStatus, RiskFlag

_NO_CHANGE: dict[str, Any] = {
    "status": None, "bucket": None, "loans": 0, "principal_minor": 0,
    "flag_code": None, "flags": 0, "received_on": None, "collected_minor": 0,
}  # fmt: skip


_NO_FLAGS_CHANGE = {k: v for k, v in _NO_CHANGE.items() if k not in ("flag_code", "flags")}


def _before(obj: Any, attribute: str) -> Any:
    """The attribute's value as loaded from the database (or last flushed)."""
    history = inspect(obj).attrs[attribute].history
    if history.deleted:
        return history.deleted[0]
    return history.unchanged[0] if history.unchanged else getattr(obj, attribute)


def _loan_deltas(loan: Loan, is_new: bool) -> list[dict[str, Any]]:
    new = (loan.status, loan.bucket, loan.principal_outstanding_minor or 0)
    if is_new:
        return [_position(loan, *new, loans=1)]
    old = (
        _before(loan, "status"),
        _before(loan, "bucket"),
        _before(loan, "principal_outstanding_minor"),
    )
    if old == new:
        return []
    if old[:2] == new[:2]:
        return [_position(loan, new[0], new[1], new[2] - old[2], loans=0)]
    return [_position(loan, *old, loans=-1, sign=-1), _position(loan, *new, loans=1)]


def _position(
    loan: Loan, status: str, bucket: str, principal: int, *, loans: int, sign: int = 1
) -> dict[str, Any]:
    return {**_dimensions(loan), "status": status, "bucket": bucket, "loans": loans,
            "principal_minor": sign * principal}  # fmt: skip


def _dimensions(loan: Any) -> dict[str, str]:
    return {"loan_id": loan.id, "merchant_id": loan.merchant_id,
            "product_code": loan.product_code, "currency": loan.currency}  # fmt: skip


def _payment_delta(session: Session, payment: Payment, is_new: bool) -> list[dict[str, Any]]:
    applied = payment.status == PaymentStatus.APPLIED
    was_applied = False if is_new else _before(payment, "status") == PaymentStatus.APPLIED
    if applied == was_applied:
        return []
    # The payment's loan is in the session (every payment path locks it); get() reads it
    # from the identity map.
    loan = session.get_one(Loan, payment.loan_id)
    return [_collected(loan, payment, applied=applied)]


def _collected(loan: Loan, payment: Payment, *, applied: bool) -> dict[str, Any]:
    amount = payment.amount_minor if applied else -payment.amount_minor
    return {**_dimensions(loan), "received_on": payment.received_on, "collected_minor": amount}


@event.listens_for(Session, "before_flush")
def _record_deltas(session: Session, _flush: UOWTransaction, _instances: object) -> None:
    rows: list[dict[str, Any]] = []
    for obj in session.new:
        rows += _deltas(session, obj, is_new=True)
    for obj in session.dirty:
        if session.is_modified(obj, include_collections=False):
            rows += _deltas(session, obj, is_new=False)
    # Objects, not a bulk insert: the flush under way writes them with everything else.
    session.add_all(PortfolioDelta(**{**_NO_CHANGE, **row}) for row in rows)


def new_loan_deltas(loan: Loan) -> tuple[Table, list[dict[str, Any]]]:
    """The deltas of a loan written by a Core INSERT (origination), which the flush listener
    does not see: the table and the rows the listener writes for a new loan."""
    return _table(PortfolioDelta), [{**_NO_CHANGE, **row} for row in _loan_deltas(loan, True)]


def new_payment_deltas(loan: Loan, payment: Payment) -> tuple[Table, list[dict[str, Any]]]:
    """The delta of a payment written by a Core INSERT (``record_payment``), which the flush
    listener does not see: the table and the row the listener writes for a new payment."""
    return _table(PortfolioDelta), [{**_NO_CHANGE, **_collected(loan, payment, applied=True)}]


def _deltas(session: Session, obj: object, *, is_new: bool) -> list[dict[str, Any]]:
    if isinstance(obj, Loan):
        return _loan_deltas(obj, is_new)
    if isinstance(obj, Payment):
        return _payment_delta(session, obj, is_new)
    return []


async def record_flag_changes(
    session: AsyncSession,
    *,
    opened: list[tuple[str, str]],
    closed: list[tuple[str, str]],
    segments: dict[str, tuple[str, str, str]],
) -> None:
    """The deltas of flags opened and closed by bulk statements, which skip the ORM: one per
    segment and code (a first close opens hundreds of thousands of flags). ``segments``: the
    (merchant, product, currency) of the loans the caller has read; the others are read."""
    changes = [(loan_id, code, 1) for loan_id, code in opened]
    changes += [(loan_id, code, -1) for loan_id, code in closed]
    if not changes:
        return
    loan = _table(Loan)
    known = dict(segments)
    unknown = sorted({loan_id for loan_id, _, _ in changes} - known.keys())
    for start in range(0, len(unknown), 5000):
        rows = await session.execute(
            select(loan.c.id, loan.c.merchant_id, loan.c.product_code, loan.c.currency).where(
                loan.c.id.in_(unknown[start : start + 5000])
            )
        )
        known.update((row[0], (row[1], row[2], row[3])) for row in rows)
    flags: Counter[tuple[tuple[str, str, str], str]] = Counter()
    for loan_id, code, change in changes:
        flags[(known[loan_id], code)] += change
    await insert_rows(
        session,
        _table(PortfolioDelta),
        [{"merchant_id": merchant, "product_code": product, "currency": currency,
          "flag_code": code, "flags": count}
         for ((merchant, product, currency), code), count in flags.items() if count],
        same={**_NO_FLAGS_CHANGE, "loan_id": None},
    )  # fmt: skip


# -- the rebase ----------------------------------------------------------------------------


async def rebase(session: AsyncSession, *, collections_since: date) -> None:
    """Recompute the base from the book and drop the deltas it now includes.

    On PostgreSQL the caller's transaction runs at REPEATABLE READ (the close's whole-book
    step sets it, app/close/service.py: run_chunk): every statement sees one snapshot, so a
    delta committed after it is neither in the new base nor deleted."""
    loan = _table(Loan)
    await session.execute(delete(PortfolioPosition))
    await session.execute(
        insert(PortfolioPosition).from_select(
            ["merchant_id", "product_code", "currency", "status", "bucket", "loans",
             "principal_minor"],
            select(loan.c.merchant_id, loan.c.product_code, loan.c.currency, loan.c.status,
                   loan.c.bucket, func.count(), func.sum(loan.c.principal_outstanding_minor))
            .group_by(loan.c.merchant_id, loan.c.product_code, loan.c.currency, loan.c.status,
                      loan.c.bucket),
        )
    )  # fmt: skip
    flag = _table(RiskFlag)
    await session.execute(delete(PortfolioFlagCount))
    await session.execute(
        insert(PortfolioFlagCount).from_select(
            ["merchant_id", "product_code", "code", "flags"],
            select(loan.c.merchant_id, loan.c.product_code, flag.c.code, func.count())
            .select_from(flag.join(loan, loan.c.id == flag.c.loan_id))
            .where(flag.c.status == FlagStatus.OPEN)
            .group_by(loan.c.merchant_id, loan.c.product_code, flag.c.code),
        )
    )
    payment = _table(Payment)
    await session.execute(
        delete(PortfolioCollection).where(PortfolioCollection.received_on >= collections_since)
    )
    await session.execute(
        insert(PortfolioCollection).from_select(
            ["received_on", "merchant_id", "product_code", "currency", "amount_minor"],
            select(payment.c.received_on, loan.c.merchant_id, loan.c.product_code,
                   loan.c.currency, func.sum(payment.c.amount_minor))
            .select_from(payment.join(loan, loan.c.id == payment.c.loan_id))
            .where(payment.c.status == PaymentStatus.APPLIED,
                   payment.c.received_on >= collections_since)
            .group_by(payment.c.received_on, loan.c.merchant_id, loan.c.product_code,
                      loan.c.currency),
        )
    )  # fmt: skip
    await session.execute(delete(PortfolioDelta))


def _table(model: type) -> Table:
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


# -- reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """Which part of the book a view covers."""

    currency: str
    merchant_id: str | None = None
    product_code: str | None = None

    def where(self, merchant: Any, product: Any, currency: Any | None) -> list[Any]:
        conditions = [] if currency is None else [currency == self.currency]
        if self.merchant_id is not None:
            conditions.append(merchant == self.merchant_id)
        if self.product_code is not None:
            conditions.append(product == self.product_code)
        return conditions


@dataclass
class Tally:
    count: int = 0
    principal_minor: int = 0


@dataclass
class Deltas:
    """The deltas since the last rebase, summed in one scan of ``portfolio_delta``."""

    positions: dict[tuple[str, str], Tally]
    flags: dict[str, int]
    collected_by_day: dict[date, int]


async def pending_deltas(session: AsyncSession, scope: Scope) -> Deltas:
    delta = PortfolioDelta
    rows = await session.execute(
        select(delta.currency, delta.status, delta.bucket, delta.flag_code, delta.received_on,
               func.sum(delta.loans), func.sum(delta.principal_minor), func.sum(delta.flags),
               func.sum(delta.collected_minor))
        .where(*scope.where(delta.merchant_id, delta.product_code, None))
        .group_by(delta.currency, delta.status, delta.bucket, delta.flag_code,
                  delta.received_on)
    )  # fmt: skip
    found = Deltas({}, {}, {})
    for currency, status, bucket, code, day, loans, principal, flags, amount in rows:
        if currency != scope.currency:
            continue
        if code is not None:
            found.flags[code] = found.flags.get(code, 0) + int(flags)
        if status is not None and bucket is not None:
            tally = found.positions.setdefault((status, bucket), Tally())
            tally.count += int(loans)
            tally.principal_minor += int(principal)
        if day is not None:
            found.collected_by_day[day] = found.collected_by_day.get(day, 0) + int(amount)
    return found


async def positions(
    session: AsyncSession, scope: Scope, deltas: Deltas
) -> dict[tuple[str, str], Tally]:
    """Loans and principal by (status, bucket) now."""
    base = PortfolioPosition
    rows = await session.execute(
        select(base.status, base.bucket, func.sum(base.loans), func.sum(base.principal_minor))
        .where(*scope.where(base.merchant_id, base.product_code, base.currency))
        .group_by(base.status, base.bucket)
    )
    tallies = {key: Tally(t.count, t.principal_minor) for key, t in deltas.positions.items()}
    for status, bucket, count, principal in rows:
        tally = tallies.setdefault((status, bucket), Tally())
        tally.count += int(count or 0)
        tally.principal_minor += int(principal or 0)
    return {key: tally for key, tally in tallies.items() if tally.count}


async def open_flags(session: AsyncSession, scope: Scope, deltas: Deltas) -> dict[str, int]:
    base = PortfolioFlagCount
    # A product lends in one currency: its code says which view its flags belong to.
    in_currency = select(Product.code).where(Product.currency == scope.currency)
    rows = await session.execute(
        select(base.code, func.sum(base.flags))
        .where(
            *scope.where(base.merchant_id, base.product_code, None),
            base.product_code.in_(in_currency),
        )
        .group_by(base.code)
    )
    counts = dict(deltas.flags)
    for code, flags in rows:
        counts[code] = counts.get(code, 0) + int(flags or 0)
    return {code: n for code, n in sorted(counts.items()) if n}


async def collected(
    session: AsyncSession, scope: Scope, deltas: Deltas, *, since: date, until: date
) -> int:
    """Payments received from ``since`` to ``until``, net of reversals."""
    base = PortfolioCollection
    total = await session.scalar(
        select(func.coalesce(func.sum(base.amount_minor), 0)).where(
            base.received_on >= since,
            base.received_on <= until,
            *scope.where(base.merchant_id, base.product_code, base.currency),
        )
    )
    recent = sum(v for day, v in deltas.collected_by_day.items() if since <= day <= until)
    return int(total or 0) + recent
