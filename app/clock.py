"""'Today' in the lender's timezone: the default for dates a client leaves out."""

from datetime import date, datetime

from app.config import get_settings


def today() -> date:
    return datetime.now(get_settings().zone).date()
