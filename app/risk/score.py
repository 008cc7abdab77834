"""The explainable risk score (0-1000) and grade (A-E) of a loan: pure, no I/O.

Start from 1000; subtract for days past due (3 points a day, at most 400) and for each open
flag by severity (low 25, medium 75, high 150, critical 300). A flag cleared within the last
six months still weighs, fading linearly to nothing, unless it goes on as the next flag of
its code, raised by the day it cleared. Grades: A >= 800, B >= 650, C >= 500,
D >= 300, E below. Every deduction is a reason (docs/risk.md).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

PERFECT = 1000  # a loan with nothing against it, and a borrower with no open loan
SEVERITY_POINTS = {"low": 25, "medium": 75, "high": 150, "critical": 300}
DPD_POINTS_PER_DAY, DPD_POINTS_MAX = 3, 400
FADE_DAYS = 182
GRADES = ((800, "A"), (650, "B"), (500, "C"), (300, "D"))
GRADE_LETTERS = "ABCDE"


@dataclass(frozen=True)
class FlagFact:
    code: str
    severity: str
    cleared_on: date | None
    raised_on: date


@dataclass(frozen=True)
class Score:
    score: int
    grade: str
    reasons: list[dict[str, object]]


def grade_for(score: int) -> str:
    for floor, grade in GRADES:
        if score >= floor:
            return grade
    return "E"


def _days_past_due_points(days_past_due: int) -> int:
    return min(days_past_due * DPD_POINTS_PER_DAY, DPD_POINTS_MAX) if days_past_due > 0 else 0


def _flag_points(flag: FlagFact, as_of: date) -> int:
    points = SEVERITY_POINTS.get(flag.severity, 0)
    if flag.cleared_on is None:
        return points
    # Not below 0: a flag cleared after the date scored (by a payment dated after the business
    # date) weighed more than open, 302 for a critical one (a tester's).
    age = max((as_of - flag.cleared_on).days, 0)
    return round(points * (1 - age / FADE_DAYS)) if age < FADE_DAYS else 0


def _weighed(flags: Iterable[FlagFact], as_of: date) -> list[FlagFact]:
    """The flags that weigh: one per episode of a code. A flag raised by the day the one before
    it of its code cleared goes on as it: a rules change that cleared a flag and a change
    back that raised it again the same day counted the one behaviour twice, open and fading,
    and so did a rerun of a date that raised a flag again, dated within the one a payment had
    cleared since (a tester's each). Of an episode the flag that weighs most weighs (of equals,
    the last raised), so no flag added to an episode lowers its weight. A relapse on a later
    day is a second episode: both weigh."""
    flags = list(flags)
    if len(flags) < 2:
        return flags  # most loans: the close scores every one it evaluates
    order = sorted(
        range(len(flags)),
        key=lambda n: (flags[n].code, flags[n].raised_on, flags[n].cleared_on or date.max),
    )
    weighing: list[int] = []
    episode_end = date.min
    for n in order:
        flag, ends = flags[n], flags[n].cleared_on or date.max
        if weighing and flags[weighing[-1]].code == flag.code and flag.raised_on <= episode_end:
            if _flag_points(flag, as_of) >= _flag_points(flags[weighing[-1]], as_of):
                weighing[-1] = n
            episode_end = max(episode_end, ends)
        else:
            weighing.append(n)
            episode_end = ends
    return [flags[n] for n in sorted(weighing)]


def score_value(days_past_due: int, flags: Iterable[FlagFact], as_of: date) -> int:
    """The score alone: the close scores every loan it evaluates, and needs no reasons."""
    deducted = _days_past_due_points(days_past_due)
    for flag in _weighed(flags, as_of):
        deducted += _flag_points(flag, as_of)
    return max(PERFECT - deducted, 0)


def score_loan(days_past_due: int, flags: Iterable[FlagFact], as_of: date) -> Score:
    reasons: list[dict[str, object]] = []
    total = PERFECT
    if points := _days_past_due_points(days_past_due):
        total -= points
        reasons.append({"code": "days_past_due", "days": days_past_due, "points": -points})
    for flag in _weighed(flags, as_of):
        if points := _flag_points(flag, as_of):
            total -= points
            reasons.append({"code": flag.code, "severity": flag.severity,
                            "cleared": flag.cleared_on is not None, "points": -points})  # fmt: skip
    score = max(total, 0)
    return Score(score, grade_for(score), reasons)
