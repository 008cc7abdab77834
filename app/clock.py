"""'Today' in the lender's timezone: the default for dates a client leaves out."""

from datetime import date, datetime

from dateutil.relativedelta import relativedelta

from app.config import get_settings

# How far back a client's date may reach. Back-dated loans bring an existing book in, and twice
# the longest term (60 months) covers any loan still worth servicing: an older date is a typo
# (year 1 overflowed the close's date arithmetic).
MAX_YEARS_BACK = 10


def today() -> date:
    return datetime.now(get_settings().zone).date()


def earliest() -> date:
    """The oldest date a loan may be disbursed on, or a close or a risk run be for."""
    return today() - relativedelta(years=MAX_YEARS_BACK)
