from app.errors import Conflict, InvalidRequest, NotFound


class CloseDateInPast(Conflict):
    code = "close_date_in_past"
    title = "Close date in the past"


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
