"""A real HTTP receiver for webhook tests, on a loopback port in a thread: it records every
request and answers from a script (status codes, hangs), then 200."""

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    def verified(self, secret: str) -> dict[str, Any]:
        """Checked by the independent standardwebhooks package, as a subscriber would."""
        return dict(Webhook(secret).verify(self.body, self.headers))


@dataclass
class Receiver:
    port: int
    received: list[Received] = field(default_factory=list)
    # Each request takes the next answer: an HTTP status, ("hang", seconds), ("trickle",
    # seconds, n) (200 and n bytes, one every so many seconds), ("big", n) (200 and n
    # bytes at once) or ("headers", status, {name: value}[, body]); then 200.
    script: list[Any] = field(default_factory=list)
    # Of the bytes of each "trickle" or "big" answer, how many the client took.
    written: list[int] = field(default_factory=list)
    # Seconds to wait before answering one particular request, whenever it arrives: a script
    # answers requests in arrival order, which concurrent deliveries do not fix.
    delay: Callable[[Received], float] = lambda _: 0.0
    # Cleared, every request waits until it is set again (and at the latest when the
    # receiver closes): a receiver hanging for as long as a test needs.
    gate: threading.Event = field(default_factory=threading.Event)
    # Every request as it comes in, answered or not (``received`` has the answered ones).
    arrived: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.gate.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def answer(self) -> Any:
        with self.lock:
            return self.script.pop(0) if self.script else 200


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            request = Received({k.lower(): v for k, v in self.headers.items()}, body)
            with receiver.lock:
                receiver.arrived.append(request)
            receiver.gate.wait()
            time.sleep(receiver.delay(request))
            answer = receiver.answer()
            if isinstance(answer, tuple) and answer[0] in ("trickle", "big"):
                self._answer_slowly(*answer)
                return
            headers: dict[str, str] = {}
            body = None
            if isinstance(answer, tuple) and answer[0] == "headers":
                answer, headers, body = answer[1], answer[2], (answer[3:] or (None,))[0]
            elif isinstance(answer, tuple):
                time.sleep(answer[1])
                answer = 200
            with receiver.lock:
                receiver.received.append(request)
            self.send_response(answer)
            self.send_header("content-type", "text/plain")
            for name, value in headers.items():
                self.send_header(name, value)
            if body is not None:
                self.send_header("content-length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body if body is not None else b"ok" if answer < 300 else b"nope")
            except OSError:  # the client hung up: a body it does not read (a compressed one)
                pass

        def _answer_slowly(self, kind: str, *how: Any) -> None:
            pause, length = (how[0], how[1]) if kind == "trickle" else (0.0, how[0])
            piece = 1 if kind == "trickle" else 65536
            self.send_response(200)
            self.send_header("content-length", str(length))
            self.end_headers()
            written = 0
            try:
                while written < length:
                    self.wfile.write(b"x" * min(piece, length - written))
                    self.wfile.flush()
                    written += min(piece, length - written)
                    time.sleep(pause)
            except OSError:  # the client hung up
                pass
            with receiver.lock:
                receiver.written.append(written)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def receiving(port: int = 0) -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(Receiver(0)))
    receiver = Receiver(server.server_address[1])
    server.RequestHandlerClass = _handler(receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.gate.set()
        server.shutdown()
        server.server_close()


async def wait_for(receiver: Receiver, count: int, seconds: float) -> None:
    """Until ``count`` requests were answered, within a bound (not a speed check)."""
    for _ in range(int(seconds * 20)):
        if len(receiver.received) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(receiver.received)} of {count} deliveries arrived")
