from datetime import date, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from app.api.fields import IsoDate, MoneyStr, Reason, Reference, Term
from app.delinquency.rules import Bucket
from app.loans.models import InstallmentStatus, LoanStatus
from app.loans.records import owed_minor, paid_minor
from app.money import format_minor, format_rate
from app.products.schemas import PRODUCT_CODE_MAX_LENGTH

if TYPE_CHECKING:
    from app.loans.service import LoanView


class LoanCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    borrower_id: str = Field(min_length=1, max_length=40)
    product_code: str = Field(min_length=1, max_length=PRODUCT_CODE_MAX_LENGTH)
    principal: MoneyStr
    term: Term
    disbursed_on: IsoDate | None = Field(default=None, description="default: today")
    first_due_date: IsoDate | None = Field(default=None, description="default: a month later")
    merchant_order_ref: Reference


class LoanCancel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason | None = None


class InstallmentRead(BaseModel):
    seq: int
    due_date: date
    principal: str
    interest: str
    fees: str
    total: str
    paid: str
    status: InstallmentStatus
    paid_on: date | None


class ScheduleRead(BaseModel):
    loan_id: str
    currency: str
    installments: list[InstallmentRead]


class BalancesRead(BaseModel):
    principal_outstanding: str
    interest_outstanding: str
    fees_outstanding: str
    overdue_amount: str
    payoff_amount: str
    credit_balance: str
    refund_due: str


class LoanRead(BaseModel):
    id: str
    borrower_id: str
    merchant_id: str
    product_code: str
    currency: str
    principal: str
    annual_interest_rate: str
    amortization: str
    term: int
    disbursed_on: date
    first_due_date: date
    merchant_order_ref: str
    status: LoanStatus
    days_past_due: int
    bucket: str = Field(json_schema_extra={"enum": [b.value for b in Bucket]})
    bucket_label: str = Field(description="M0 (current), M1 (1-30), M2, M3, M3+ (90+)")
    delinquency_as_of: date | None
    balances_as_of: date
    balances: BalancesRead
    paid_off_on: date | None
    cancelled_on: date | None
    restructured_on: date | None = Field(
        description="the business date of the last approved term extension; the loan shows "
        "`restructured` while current"
    )
    created_at: datetime
    schedule: ScheduleRead | None = None


def loan_read(view: "LoanView", *, with_schedule: bool = False) -> LoanRead:
    loan, cur = view.loan, view.loan.currency
    return LoanRead(
        id=loan.id,
        borrower_id=loan.borrower_id,
        merchant_id=loan.merchant_id,
        product_code=loan.product_code,
        currency=cur,
        principal=format_minor(loan.principal_minor, cur),
        annual_interest_rate=format_rate(loan.annual_interest_rate),
        amortization=loan.amortization,
        term=loan.term,
        disbursed_on=loan.disbursed_on,
        first_due_date=loan.first_due_date,
        merchant_order_ref=loan.merchant_order_ref,
        status=LoanStatus(loan.status),
        days_past_due=loan.days_past_due,
        bucket=loan.bucket,
        bucket_label=Bucket(loan.bucket).label,
        delinquency_as_of=view.delinquency_as_of,
        balances_as_of=view.today,
        balances=balances_read(view),
        paid_off_on=loan.paid_off_on,
        cancelled_on=loan.cancelled_on,
        restructured_on=loan.restructured_on,
        created_at=loan.created_at,
        schedule=schedule_read(view) if with_schedule else None,
    )


def balances_read(view: "LoanView") -> BalancesRead:
    loan, position, cur = view.loan, view.position, view.loan.currency
    closed = loan.status == LoanStatus.CANCELLED
    payoff = 0 if closed else view.payoff_minor(position)
    # Never more than the payoff, which settles every arrear: a late fee of today's close
    # that a payoff today withdraws stays in the arrears, and on a loan all but wholly overdue
    # the arrears quoted came to more than the payoff, a payment refused (a tester's).
    overdue = 0 if closed else min(position.overdue_minor(view.arrears_as_of), payoff)
    return BalancesRead(
        principal_outstanding=format_minor(loan.principal_outstanding_minor, cur),
        interest_outstanding=format_minor(
            0 if closed else sum(i.interest_left() for i in position.installments), cur
        ),
        fees_outstanding=format_minor(
            0 if closed else sum(i.fees_left(view.today) for i in position.installments), cur
        ),
        overdue_amount=format_minor(overdue, cur),
        payoff_amount=format_minor(payoff, cur),
        credit_balance=format_minor(loan.credit_balance_minor, cur),
        refund_due=format_minor(loan.refund_due_minor, cur),
    )


def schedule_read(view: "LoanView") -> ScheduleRead:
    cur = view.loan.currency
    return ScheduleRead(
        loan_id=view.loan.id,
        currency=cur,
        installments=[
            InstallmentRead(
                seq=i.seq,
                due_date=i.due_date,
                principal=format_minor(i.principal_minor, cur),
                interest=format_minor(i.interest_minor - i.interest_waived_minor, cur),
                fees=format_minor(i.fees_minor + i.late_fees_minor - i.fees_waived_minor, cur),
                total=format_minor(owed_minor(i), cur),
                paid=format_minor(paid_minor(i), cur),
                status=view.installment_status(i),
                paid_on=i.paid_on,
            )
            for i in view.installments
        ],
    )  # fmt: skip
