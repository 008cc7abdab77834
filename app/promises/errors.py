from app.errors import Conflict, NotFound


class PromiseNotFound(NotFound):
    code = "promise_not_found"


class PromiseAlreadyOpen(Conflict):
    code = "promise_already_open"
    title = "A promise is already open"
