from typing import ClassVar

from app.errors import Conflict, InvalidRequest, LoanwatchError, NotFound


class CloseDateInPast(Conflict):
    code = "close_date_in_past"


class CloseDateInFuture(InvalidRequest):
    code = "close_date_in_future"
    title = "Close date in the future"


class CloseInProgress(Conflict):
    code = "close_in_progress"


class CloseRunNotFound(NotFound):
    code = "close_run_not_found"


class CloseCatchUpTooLong(InvalidRequest):
    code = "close_catch_up_too_long"
    title = "Too many dates to close at once"


class CloseStopped(LoanwatchError):
    """A close a request ran in the service, cancelled as the service stops."""

    status = 503
    code = "service_busy"
    title = "Service busy"
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "30"}
