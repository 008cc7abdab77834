from app.errors import Conflict, InvalidRequest, NotFound


class LoanNotFound(NotFound):
    code = "loan_not_found"


class LoanNotActive(Conflict):
    code = "loan_not_active"


class DuplicateMerchantOrderRef(Conflict):
    code = "duplicate_merchant_order_ref"
    title = "Merchant order reference used already"


class CreditLimitExceeded(InvalidRequest):
    code = "credit_limit_exceeded"
    title = "Credit limit exceeded"


class CurrencyMismatch(InvalidRequest):
    code = "currency_mismatch"
    title = "Currency mismatch"
