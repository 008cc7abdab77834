"""The early-warning rules' thresholds (SPEC: Early-warning flags), adjustable at
``PUT /v1/risk/rules``; defaults as in the spec."""

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from app.delinquency.rules import Bucket
from app.money import RATE_PATTERN, format_minor


class FlagCode(StrEnum):
    FIRST_PAYMENT_DEFAULT = "first_payment_default"
    NEVER_PAID = "never_paid"
    EARLY_PAYMENT_DEFAULT = "early_payment_default"
    CONSECUTIVE_MISSED = "consecutive_missed"
    DPD_ROLL_FORWARD = "dpd_roll_forward"
    PAYMENT_REVERSAL = "payment_reversal"
    FAILED_DEBITS = "failed_debits"
    CURE_RELAPSE = "cure_relapse"
    MULTI_LOAN_DELINQUENCY = "multi_loan_delinquency"
    PARTIAL_PAYMENTS = "partial_payments"
    LATE_DRIFT = "late_drift"
    BROKEN_PROMISE = "broken_promise"


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


# dpd_roll_forward's severity follows the bucket the loan rolled into.
ROLL_FORWARD_SEVERITY = {
    Bucket.DPD_1_30: Severity.LOW,
    Bucket.DPD_31_60: Severity.MEDIUM,
    Bucket.DPD_61_90: Severity.HIGH,
    Bucket.DPD_90_PLUS: Severity.CRITICAL,
}


def _decimal_text(value: object) -> object:
    # Written as every rate of the API: "1E-30" or 23 decimals is no ratio anyone meant.
    if isinstance(value, Decimal) or (isinstance(value, str) and RATE_PATTERN.match(value)):
        return value
    if isinstance(value, str) and value.startswith("-") and RATE_PATTERN.match(value[1:]):
        # A decimal string all the same: told what is wrong with it (a tester's).
        raise ValueError("Input should be greater than 0")
    raise ValueError(
        "must be a decimal string such as '0.8' with at most 6 decimals (JSON numbers are refused)"
    )


# Strict: a JSON true is not a threshold of 1, nor "10" a count.
Threshold = Annotated[int, Strict()]
# Documented as what it takes, a string: a Decimal's own schema offers a number too, which
# generated clients would send and be refused.
Ratio = Annotated[
    Decimal,
    BeforeValidator(_decimal_text),
    WithJsonSchema({"type": "string", "pattern": RATE_PATTERN.pattern.replace(r"\Z", "$"),
                    "examples": ["0.8"], "description": "a share: above 0, at most 1"}),
]  # fmt: skip


# The validation context of a stored version: one stored before its escalations were checked
# against the defaults may not satisfy them, and must still be read (and replaced by a PUT).
STORED = "stored"
# An escalation's threshold and the one it follows (declared before it).
_FOLLOWS = {
    "first_payment_default_high_days": ("first_payment_default_days", ">="),
    "consecutive_missed_critical_count": ("consecutive_missed_count", ">="),
    "partial_payment_min_periods": ("partial_payment_periods", "<="),
}


class RiskRules(BaseModel):
    # Defaults validated too: a PUT of one threshold takes the others' defaults, and the
    # escalation it left below its default threshold ({"consecutive_missed_count": 4}, the
    # critical count's default 3) was stored, then failed every read of the rules: 500s on
    # the rules, risk runs, closes and payments (a tester's).
    model_config = ConfigDict(extra="forbid", validate_default=True)

    first_payment_default_days: Threshold = Field(default=10, ge=1, le=365)
    first_payment_default_high_days: Threshold = Field(default=30, ge=1, le=365)
    never_paid_dpd: Threshold = Field(default=30, ge=1, le=365)
    early_payment_default_installments: Threshold = Field(default=3, ge=1, le=12)
    early_payment_default_days: Threshold = Field(default=60, ge=1, le=365)
    consecutive_missed_count: Threshold = Field(default=2, ge=1, le=12)
    consecutive_missed_critical_count: Threshold = Field(default=3, ge=1, le=24)
    payment_reversal_days: Threshold = Field(default=60, ge=1, le=365)
    payment_reversal_high_count: Threshold = Field(default=2, ge=1, le=50)
    failed_debits_count: Threshold = Field(default=2, ge=1, le=50)
    failed_debits_days: Threshold = Field(default=30, ge=1, le=365)
    cure_relapse_days: Threshold = Field(default=60, ge=1, le=365)
    multi_loan_count: Threshold = Field(default=2, ge=2, le=20)
    partial_payment_ratio: Ratio = Field(default=Decimal("0.8"), gt=0, le=1)
    partial_payment_periods: Threshold = Field(default=3, ge=1, le=12)
    partial_payment_min_periods: Threshold = Field(default=2, ge=1, le=12)
    late_drift_installments: Threshold = Field(default=4, ge=2, le=12)
    late_drift_days: Threshold = Field(default=5, ge=1, le=365)
    broken_promise_days: Threshold = Field(default=60, ge=1, le=365)
    # Credit policy: a cut limit climbs back only after this long on book without days past
    # due (counted from the first loan's disbursement or the last cure, whichever is later).
    limit_recovery_clean_days: Threshold = Field(default=182, ge=1, le=730)

    @field_validator(*_FOLLOWS)
    @classmethod
    def _follows_its_threshold(cls, value: int, info: ValidationInfo) -> int:
        # A field check, not a model one, so the error names the field (fields validate in
        # order: the threshold it follows is in ``info.data`` unless it failed itself).
        if info.context == STORED:
            return value  # a version already in force is read as it was stored
        other, relation = _FOLLOWS[str(info.field_name)]
        bound = info.data.get(other)
        if bound is not None and (value < bound if relation == ">=" else value > bound):
            raise ValueError(f"must be {relation} {other} ({bound})")
        return value


@dataclass(frozen=True, slots=True)
class BrokenPromise:
    promise_id: str
    currency: str
    amount_minor: int
    paid_minor: int
    due_on: str
    broken_on: str
    restructure_id: str | None = None  # an installment of this repayment plan
    plan_seq: int | None = None


@dataclass(frozen=True, slots=True)
class LoanFeatures:
    """What the rules look at for one loan as of a business date (computed in SQL; a plain
    value, not a validated model: the close builds hundreds of thousands a night)."""

    loan_id: str
    borrower_id: str
    days_past_due: int
    bucket: str
    previous_bucket: str
    # From the cure to the first day of the spell past due after it (None: no such spell).
    cured_days_before_relapse: int | None
    first_due_date: str | None
    first_installment_days_late: int | None  # unpaid beyond tolerance; None when settled
    first_installment_unpaid_minor: int
    currency: str  # the loan's: money in the evidence is a decimal string, as everywhere
    early_default_seq: int | None  # first of the early installments 60+ days late
    latest_due_seq: int | None  # newest installment due past its grace
    last_good_seq: int | None  # newest such installment not missed
    settled_payments: int
    reversals: int
    failed_debits: int
    borrower_delinquent_loans: int
    last_settled_days_late: int | None = None  # the newest settled installment
    drift_window_first_days_late: int | None = None  # the oldest of the last N settled
    partial_periods: int = 0  # of the last N due periods, paid something but too little
    broken_promises: int = 0  # promises broken within broken_promise_days
    broken_promise: BrokenPromise | None = None  # the latest of them
    arrears_since: str | None = None  # the due date of the oldest installment past due
    plan_running: bool = False  # an approved repayment plan has an installment still open
    # For the evidence: what lies behind the counts above.
    cured_on: str | None = None  # the cure before the spell, and the spell's first day
    relapsed_on: str | None = None
    last_reversed_payment_id: str | None = None  # the latest of the reversals counted
    last_reversed_on: str | None = None
    last_failed_debit_id: str | None = None  # the latest of the failed debits counted
    last_failed_on: str | None = None
    last_partial_seq: int | None = None  # the newest of the partial periods
    early_default_due_date: str | None = None  # the early default's installment's
    latest_due_date: str | None = None  # the newest installment due past its grace
    missed_since: str | None = None  # the due date of the first after the newest good one
    last_settled_seq: int | None = None  # the newest settled installment, and when
    last_settled_on: str | None = None
    drift_window_first_seq: int | None = None  # the oldest of the last N settled, and when
    drift_window_first_settled_on: str | None = None
    reversed_payment_ids: tuple[str, ...] = ()  # every reversal counted
    failed_debit_ids: tuple[str, ...] = ()  # every failed debit counted
    partial_seqs: tuple[int, ...] = ()  # the installments of the partial periods
    delinquent_loan_ids: tuple[str, ...] = ()  # the borrower's loans past due, this one too


Evaluation = dict[FlagCode, tuple[Severity, dict[str, object]]]


def evaluate(f: LoanFeatures, rules: RiskRules) -> Evaluation:
    """The flags whose conditions hold, each with severity and evidence: pure, no I/O."""
    flags: Evaluation = {}
    fpd = f.first_installment_days_late
    if fpd is not None and fpd >= rules.first_payment_default_days:
        high = fpd >= rules.first_payment_default_high_days
        flags[FlagCode.FIRST_PAYMENT_DEFAULT] = (
            Severity.HIGH if high else Severity.MEDIUM,
            {"installment_seq": 1, "due_date": f.first_due_date, "days_late": fpd,
             "unpaid": format_minor(f.first_installment_unpaid_minor, f.currency)},
        )  # fmt: skip
    if f.settled_payments == 0 and f.days_past_due >= rules.never_paid_dpd:
        flags[FlagCode.NEVER_PAID] = (
            Severity.CRITICAL,
            {"days_past_due": f.days_past_due, "settled_payments": 0,
             "first_due_date": f.first_due_date},
        )  # fmt: skip
    if f.early_default_seq is not None:
        flags[FlagCode.EARLY_PAYMENT_DEFAULT] = (
            Severity.HIGH,
            {"installment_seq": f.early_default_seq, "due_date": f.early_default_due_date,
             "days_past_due": f.days_past_due},
        )  # fmt: skip
    if f.latest_due_seq is not None:
        run = f.latest_due_seq - (f.last_good_seq or 0)
        if run >= rules.consecutive_missed_count:
            critical = run >= rules.consecutive_missed_critical_count
            flags[FlagCode.CONSECUTIVE_MISSED] = (
                Severity.CRITICAL if critical else Severity.HIGH,
                {"missed_installments": list(range(f.latest_due_seq - run + 1,
                                                   f.latest_due_seq + 1)),
                 "first_due_date": f.missed_since, "latest_due_date": f.latest_due_date},
            )  # fmt: skip
    bucket, previous = Bucket(f.bucket), Bucket(f.previous_bucket)
    if bucket.rank > previous.rank and bucket is not Bucket.CURRENT:
        flags[FlagCode.DPD_ROLL_FORWARD] = (
            ROLL_FORWARD_SEVERITY[bucket],
            {"from_bucket": previous.value, "to_bucket": bucket.value,
             "days_past_due": f.days_past_due, "arrears_since": f.arrears_since},
        )  # fmt: skip
    if f.reversals >= 1:
        high = f.reversals >= rules.payment_reversal_high_count
        flags[FlagCode.PAYMENT_REVERSAL] = (
            Severity.HIGH if high else Severity.MEDIUM,
            {"reversals": f.reversals, "within_days": rules.payment_reversal_days,
             "payment_ids": list(f.reversed_payment_ids),
             "latest_payment_id": f.last_reversed_payment_id,
             "latest_reversed_on": f.last_reversed_on},
        )  # fmt: skip
    if f.failed_debits >= rules.failed_debits_count:
        flags[FlagCode.FAILED_DEBITS] = (
            Severity.MEDIUM,
            {"failed_debits": f.failed_debits, "within_days": rules.failed_debits_days,
             "failed_debit_ids": list(f.failed_debit_ids),
             "latest_failed_debit_id": f.last_failed_debit_id,
             "latest_attempted_on": f.last_failed_on},
        )  # fmt: skip
    # The spell is the loan's latest (it is past due): from its first day, whichever
    # installment is the oldest missed now (paying an older one moved it, when it was worked
    # out from today's days past due: a tester's).
    relapse = f.cured_days_before_relapse
    if f.days_past_due > 0 and relapse is not None and 0 < relapse <= rules.cure_relapse_days:
        flags[FlagCode.CURE_RELAPSE] = (
            Severity.MEDIUM,
            {"cured_days_before_relapse": relapse, "cured_on": f.cured_on,
             "relapsed_on": f.relapsed_on, "days_past_due": f.days_past_due},
        )  # fmt: skip
    if f.days_past_due > 0 and f.borrower_delinquent_loans >= rules.multi_loan_count:
        flags[FlagCode.MULTI_LOAN_DELINQUENCY] = (
            Severity.HIGH,
            {"borrower_id": f.borrower_id, "delinquent_loans": f.borrower_delinquent_loans,
             "loan_ids": list(f.delinquent_loan_ids)},
        )  # fmt: skip
    # Paying less than the schedule is what an agreed plan allows: not a warning while it runs.
    if f.partial_periods >= rules.partial_payment_min_periods and not f.plan_running:
        flags[FlagCode.PARTIAL_PAYMENTS] = (
            Severity.MEDIUM,
            {"partial_periods": f.partial_periods, "of_last": rules.partial_payment_periods,
             "ratio": str(rules.partial_payment_ratio),
             "installment_seqs": list(f.partial_seqs),
             "latest_installment_seq": f.last_partial_seq},
        )  # fmt: skip
    last, first = f.last_settled_days_late, f.drift_window_first_days_late
    if last is not None and first is not None and last > 0:
        if last - first >= rules.late_drift_days:
            flags[FlagCode.LATE_DRIFT] = (
                Severity.LOW,
                {"days_late_first": first, "days_late_last": last,
                 "installments": rules.late_drift_installments,
                 "first_installment_seq": f.drift_window_first_seq,
                 "first_settled_on": f.drift_window_first_settled_on,
                 "last_installment_seq": f.last_settled_seq,
                 "last_settled_on": f.last_settled_on},
            )  # fmt: skip
    # A broken promise weighs while the arrears it was meant to settle remain: clearing them
    # (or broken_promise_days passing) ends the episode. Arrears that fell due after its date
    # are another matter: past due at all, the flag came back for a promise settled, or for
    # one taken while nothing was past due whose date no installment fell due by (a tester's).
    promise = f.broken_promise
    if (
        promise is not None
        and f.arrears_since is not None
        and f.days_past_due > 0
        and f.arrears_since <= promise.due_on
    ):
        flags[FlagCode.BROKEN_PROMISE] = (
            Severity.HIGH,
            {"promise_id": promise.promise_id, "restructure_id": promise.restructure_id,
             "plan_installment": promise.plan_seq, "currency": promise.currency,
             "amount": format_minor(promise.amount_minor, promise.currency),
             "paid": format_minor(promise.paid_minor, promise.currency),
             "due_on": promise.due_on, "broken_on": promise.broken_on,
             "broken_promises": f.broken_promises, "within_days": rules.broken_promise_days,
             "days_past_due": f.days_past_due},
        )  # fmt: skip
    return flags
