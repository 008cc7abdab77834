"""The initial credit limit policy (docs/credit-policy.md): pure, no I/O.

A borrower who declares a monthly income gets ``income_multiple`` times it; one who does not
gets ``limit_without_income``; either is capped at ``max_limit``.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class LimitPolicy:
    income_multiple_permille: int
    limit_without_income_minor: int
    max_limit_minor: int


def initial_credit_limit(policy: LimitPolicy, monthly_income_minor: int | None) -> int:
    if monthly_income_minor is None:
        limit = policy.limit_without_income_minor
    else:
        limit = monthly_income_minor * policy.income_multiple_permille // 1000
    return min(limit, policy.max_limit_minor)
