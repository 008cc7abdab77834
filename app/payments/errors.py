from app.errors import Conflict, InvalidRequest, NotFound


class PaymentNotFound(NotFound):
    code = "payment_not_found"


class AmountExceedsPayoff(InvalidRequest):
    code = "amount_exceeds_payoff"
    title = "Amount exceeds payoff"


class PaymentAlreadyRecorded(Conflict):
    code = "payment_already_recorded"


class PaymentAlreadyReversed(Conflict):
    code = "payment_already_reversed"
