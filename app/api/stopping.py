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

# How long a cancelled request may take to answer itself before the stop answers for it.
ITS_OWN_ANSWER_SECONDS = 2.0


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
            request.cancel()
            request.add_done_callback(_retrieved)  # its clean-up may go on without us
            # A moment for its own answer (a close records its run failed and answers 503
            # service_busy); no longer: an Idempotency-Key's release waiting on a database the
            # stop was closing held the answer until the process had gone (a re-verifier's).
            await asyncio.wait({request}, timeout=ITS_OWN_ANSWER_SECONDS)
            if started:
                if request.done():
                    return  # answered: over, not an error for uvicorn to log with a traceback
                raise  # half an answer: uvicorn closes the connection
            answered = True
            log.warning("%s %s cut short by the stop: answered 503", scope["method"],
                        scope["path"])  # fmt: skip
            stopping = problem(
                503, "service_stopping", "Service stopping",
                "the server stopped before the request finished; nothing of it was applied "
                "unless its Idempotency-Key says so: retry it with the same key (told 409 "
                "in progress, wait a minute: the key stays claimed that long)",
                headers={"Retry-After": "5"},
            )  # fmt: skip
            await stopping(scope, receive, send)


def _retrieved(request: "asyncio.Future[None]") -> None:
    if not request.cancelled() and (error := request.exception()) is not None:
        log.warning("a request cut short by the stop ended with %r", error)
