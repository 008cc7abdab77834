"""How a borrower's credit limit follows the grade: pure, no I/O (docs/risk.md).

- A fall to grade D or E (from a better grade, or from D to E): the limit is cut to the
  current exposure (nothing already lent is called in); the limit before the cut is
  remembered. Only the fall cuts: while the grade stays, the limit stays (an admin's override
  stands). Nothing more is lent while the grade is D or E, unless an admin set the limit since
  the fall.
- Back at A or B after sustained good behaviour — nothing past due for
  ``limit_recovery_clean_days`` (default 182: six months on book without days past due) — the
  limit climbs back towards the remembered one by a quarter of it at a time, at most once every
  30 days.
"""

from dataclasses import dataclass
from datetime import date

RECOVERY_INTERVAL_DAYS = 30
RECOVERY_STEPS = 4
LENDS_NOTHING = ("D", "E")


def available_minor(
    credit_limit_minor: int, exposure_minor: int, grade: str, overridden: bool
) -> int:
    """What more may be lent: the limit less the exposure, and nothing while the borrower is
    graded D or E unless an admin set the limit since the fall (``overridden``: a decision to
    lend). Repayments under a cut limit freed headroom, and a borrower 159 days past due
    borrowed again (a tester's)."""
    if grade in LENDS_NOTHING and not overridden:
        return 0
    return max(credit_limit_minor - exposure_minor, 0)


@dataclass(frozen=True)
class LimitChange:
    credit_limit_minor: int
    limit_before_cut_minor: int | None
    reason: str


def next_limit(
    *,
    previous_grade: str,
    grade: str,
    credit_limit_minor: int,
    exposure_minor: int,
    limit_before_cut_minor: int | None,
    limit_changed_on: date | None,
    clean_since: date | None,
    clean_days_required: int,
    as_of: date,
) -> LimitChange | None:
    """``clean_since``: since when the borrower has had no days past due (None: past due now).
    ``previous_grade``: the borrower's grade before this grading (``grade`` when unchanged)."""
    if grade in LENDS_NOTHING:
        # Grades are letters, worse later: E to D is a recovery, not a reason to cut again.
        if grade <= previous_grade or credit_limit_minor <= exposure_minor:
            return None
        return LimitChange(
            exposure_minor, limit_before_cut_minor or credit_limit_minor, f"grade_{grade}"
        )
    if grade not in ("A", "B") or limit_before_cut_minor is None or clean_since is None:
        return None
    # An admin's override at or above the remembered limit: recovery would lower it.
    if credit_limit_minor >= limit_before_cut_minor:
        return None
    if (as_of - clean_since).days < clean_days_required:
        return None
    if limit_changed_on and (as_of - limit_changed_on).days < RECOVERY_INTERVAL_DAYS:
        return None
    step = max(limit_before_cut_minor // RECOVERY_STEPS, 1)
    restored = min(limit_before_cut_minor, credit_limit_minor + step)
    remembered = None if restored >= limit_before_cut_minor else limit_before_cut_minor
    return LimitChange(restored, remembered, "recovery")
