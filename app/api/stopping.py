"""A request the server cancels as it stops is answered 503, not 500 or nothing.

A stopping uvicorn lets the requests in flight finish for a grace period, then cancels them
and answers those with nothing sent yet 500 Internal Server Error: payments waiting on rows a
close held were told the server failed (a tester's). They were not applied (their
transactions never committed) or, cancelled after the commit, their answer is kept under
their Idempotency-Key: a retry does the right thing either way, which a 503 says.

The request runs as a task of its own, so the answer goes out at the cancellation, not once
the request's own clean-up is over: the Idempotency-Key's release, waiting on a database the
stop was closing, held it until the process had gone, and the client got no answer at all (a
re-verifier's)."""

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import problem

log = logging.getLogger("loanwatch.api")


class AnswerCancelledAs503:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = answered = False

        async def noting_the_start(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the stop's 503 went instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        request = asyncio.ensure_future(self.app(scope, receive, noting_the_start))
        try:
            # Shielded: awaited bare, a cancelled task waits for the one it awaits to finish
            # being cancelled, clean-up included.
            await asyncio.shield(request)
        except asyncio.CancelledError:
            # Answered now, not after its clean-up: the process may be gone by then (an
            # Idempotency-Key's release waited on a database the stop was closing, and the
            # client got no answer: a re-verifier's; waiting even 2 s for a request's own
            # answer lost them all). Its clean-up goes on without us, its answer dropped.
            request.cancel()
            request.add_done_callback(_retrieved)
            _cleaning_up.add(request)
            request.add_done_callback(_cleaning_up.discard)
            if started:
                raise  # half an answer: uvicorn closes the connection
            answered = True
            log.warning("%s %s cut short by the stop: answered 503", scope["method"],
                        scope["path"])  # fmt: skip
            stopping = problem(
                503, "service_stopping", "Service stopping",
                "the server stopped before the request finished; retry it once the service "
                "is back (with its Idempotency-Key, if it had one: the key runs it only if it "
                "was not applied)",
                headers={"Retry-After": "5"},
            )  # fmt: skip
            await stopping(scope, receive, send)


# The requests the stop answered for, still running their clean-up (a transaction's rollback,
# an Idempotency-Key's release).
_cleaning_up: set["asyncio.Future[None]"] = set()


async def clean_ups_done(seconds: float) -> None:
    """Wait (at most ``seconds``) for the clean-up of the requests the stop answered for: the
    database closed under them, their abandoned connections were reported with tracebacks."""
    if _cleaning_up:
        await asyncio.wait(set(_cleaning_up), timeout=seconds)


def _retrieved(request: "asyncio.Future[None]") -> None:
    if not request.cancelled() and (error := request.exception()) is not None:
        log.warning("a request cut short by the stop ended with %r", error)
