from app.errors import Conflict, NotFound


class RestructureNotFound(NotFound):
    code = "restructure_not_found"


class RestructureNotPending(Conflict):
    code = "restructure_not_pending"
    title = "The restructure has been decided"


class RestructureExpired(Conflict):
    """A plan whose first date has passed by the time it is approved: it must be asked again
    with dates the borrower can still meet."""

    code = "restructure_expired"
    title = "The restructure's dates have passed"


class NoFeesToWaive(Conflict):
    code = "no_fees_to_waive"
    title = "No fees are due"


class NothingToDefer(Conflict):
    code = "nothing_to_defer"
    title = "No installment is still ahead"


class HolidaysTooLong(Conflict):
    """Approving a holiday after others were approved would pass the months a loan may have."""

    code = "holidays_too_long"
    title = "The loan's payment holidays would be too long"


class TermTooLong(Conflict):
    """Approving an extension after another one was approved would pass the longest term."""

    code = "term_too_long"
    title = "The term would be too long"


class ExtensionDoesNotFit(Conflict):
    """What is left is too little for the longer term: a few cents over many months, or, with
    the product's installment multiple, installments that would repay it early and leave the
    later ones with nothing to pay."""

    code = "extension_does_not_fit"
    title = "The extended installments do not fit what is left"


class PlanExceedsPayoff(Conflict):
    """A plan that fitted the loan when requested asks more than its payoff amount by the time
    it is approved: the loan was paid down since."""

    code = "plan_exceeds_payoff"
    title = "The plan asks more than the loan's payoff"
