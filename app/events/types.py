"""Every event type Loanwatch writes (SPEC: Events)."""

EVENT_TYPES = (
    "loan.created",
    "loan.cancelled",
    "loan.paid_off",
    "payment.received",
    "payment.reversed",
    "payment.debit_failed",
    "installment.due_soon",
    "loan.delinquency_changed",
    "loan.late_fee_assessed",
    # Beyond SPEC's list: a late fee a replay takes back (a payment found received in time)
    # or charges again (that payment reversed), each a ledger row like the charge itself.
    "loan.late_fee_forgiven",
    "loan.late_fee_reinstated",
    "risk.flag_raised",
    "risk.flag_cleared",
    # Beyond SPEC's list: a flag whose severity moved while it stayed open (SPEC's "medium →
    # high", "high → critical"); collections act on the severity, not only on the raise.
    "risk.flag_severity_changed",
    "risk.grade_changed",
    "risk.segment_alert",
    "borrower.credit_limit_changed",
    "restructure.approved",
    "promise.broken",
    "webhook.test",
)
TEST_EVENT = "webhook.test"


def matching(patterns: list[str]) -> list[str]:
    """The event types any of the patterns matches: an exact type, ``<prefix>.*`` or ``*``."""
    return [
        t for t in EVENT_TYPES
        if any(p in ("*", t) or (p.endswith(".*") and t.startswith(p[:-1])) for p in patterns)
    ]  # fmt: skip


def valid_pattern(pattern: str) -> bool:
    """A pattern that matches some event type."""
    return bool(matching([pattern]))
