"""A loan and its installments as the API renders them, whether ORM instances or plain rows.

The hot paths build no ORM instances: ``GET /v1/loans/{id}`` reads one Core statement into
:class:`LoanRecord` and :class:`InstallmentRecord` tuples, and origination renders the
installments it has just written from :class:`InstallmentRecord`s. Building, instrumenting and
reading ORM instances was about a fifth of a GET's CPU and a tenth of an origination's
(py-spy, bench/http_load.py). The ORM models satisfy the same protocols, so every other path
renders through the same functions.
"""

from datetime import date, datetime
from decimal import Decimal
from typing import NamedTuple, Protocol


class LoanFields(Protocol):
    """What rendering a loan reads."""

    @property
    def id(self) -> str: ...
    @property
    def borrower_id(self) -> str: ...
    @property
    def merchant_id(self) -> str: ...
    @property
    def product_code(self) -> str: ...
    @property
    def currency(self) -> str: ...
    @property
    def principal_minor(self) -> int: ...
    @property
    def annual_interest_rate(self) -> Decimal: ...
    @property
    def amortization(self) -> str: ...
    @property
    def term(self) -> int: ...
    @property
    def disbursed_on(self) -> date: ...
    @property
    def first_due_date(self) -> date: ...
    @property
    def merchant_order_ref(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def principal_outstanding_minor(self) -> int: ...
    @property
    def credit_balance_minor(self) -> int: ...
    @property
    def refund_due_minor(self) -> int: ...
    @property
    def days_past_due(self) -> int: ...
    @property
    def bucket(self) -> str: ...
    @property
    def delinquency_as_of(self) -> date | None: ...
    @property
    def paid_off_on(self) -> date | None: ...
    @property
    def cancelled_on(self) -> date | None: ...
    @property
    def restructured_on(self) -> date | None: ...
    @property
    def created_at(self) -> datetime: ...


class InstallmentFields(Protocol):
    """What rendering an installment, and the position it is part of, reads."""

    @property
    def seq(self) -> int: ...
    @property
    def due_date(self) -> date: ...
    @property
    def principal_minor(self) -> int: ...
    @property
    def interest_minor(self) -> int: ...
    @property
    def fees_minor(self) -> int: ...
    @property
    def late_fees_minor(self) -> int: ...
    @property
    def paid_principal_minor(self) -> int: ...
    @property
    def paid_interest_minor(self) -> int: ...
    @property
    def paid_fees_minor(self) -> int: ...
    @property
    def interest_waived_minor(self) -> int: ...
    @property
    def fees_waived_minor(self) -> int: ...
    @property
    def late_fee_assessed_on(self) -> date | None: ...
    @property
    def paid_on(self) -> date | None: ...
    @property
    def status(self) -> str: ...


def owed_minor(i: InstallmentFields) -> int:
    """What the installment asks in all: principal, interest and every fee charged, less
    what was waived."""
    return (
        i.principal_minor + i.interest_minor - i.interest_waived_minor
        + i.fees_minor + i.late_fees_minor - i.fees_waived_minor
    )  # fmt: skip


def paid_minor(i: InstallmentFields) -> int:
    return i.paid_principal_minor + i.paid_interest_minor + i.paid_fees_minor


class LoanRecord(NamedTuple):
    """A ``loan`` row's rendered columns, in the order the read selects them."""

    id: str
    borrower_id: str
    merchant_id: str
    product_code: str
    currency: str
    principal_minor: int
    annual_interest_rate: Decimal
    amortization: str
    term: int
    disbursed_on: date
    first_due_date: date
    merchant_order_ref: str
    status: str
    principal_outstanding_minor: int
    credit_balance_minor: int
    refund_due_minor: int
    days_past_due: int
    bucket: str
    delinquency_as_of: date | None
    paid_off_on: date | None
    cancelled_on: date | None
    restructured_on: date | None
    created_at: datetime


class InstallmentRecord(NamedTuple):
    """A ``loan_installment`` row's rendered columns, in the order the read selects them."""

    seq: int
    due_date: date
    principal_minor: int
    interest_minor: int
    fees_minor: int
    late_fees_minor: int
    paid_principal_minor: int
    paid_interest_minor: int
    paid_fees_minor: int
    interest_waived_minor: int
    fees_waived_minor: int
    late_fee_assessed_on: date | None
    paid_on: date | None
    status: str
