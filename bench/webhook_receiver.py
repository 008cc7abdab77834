"""A fast local webhook receiver for bench/webhook_bench.py: raw asyncio (uvloop when
installed), HTTP/1.1 keep-alive, one process, answers ``200 ok`` at once.

Every ``POST`` is counted and, once a secret is set, its Standard Webhooks signature is checked
with hmac-sha256 (a bad one is counted, still answered 200). The receiver remembers every
``webhook-id`` it saw, so duplicates are counted exactly. Control, on the same port:

- ``GET /stats``: JSON counters (requests, distinct ids, duplicates, bad signatures, body
  bytes, the wall time of the first and last delivery);
- ``POST /reset`` with ``{"secret": "whsec_..."}`` (or ``{}``): forget everything, set the key.

    .venv/bin/python bench/webhook_receiver.py --port 8765
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any, cast

OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


class Stats:
    def __init__(self) -> None:
        self.reset(None)

    def reset(self, secret: str | None) -> None:
        self.key = base64.b64decode(secret.removeprefix("whsec_")) if secret else None
        self.requests = 0
        self.ids: set[str] = set()
        self.duplicates = 0
        self.unsigned = 0
        self.bad_signatures = 0
        self.body_bytes = 0
        self.first: float | None = None
        self.last: float | None = None

    def record(self, headers: dict[bytes, bytes], body: bytes) -> None:
        now = time.time()
        if self.first is None:
            self.first = now
        self.last = now
        self.requests += 1
        self.body_bytes += len(body)
        msg_id = headers.get(b"webhook-id", b"").decode()
        if msg_id in self.ids:
            self.duplicates += 1
        else:
            self.ids.add(msg_id)
        if self.key is None:
            return
        signatures = headers.get(b"webhook-signature")
        timestamp = headers.get(b"webhook-timestamp")
        if not signatures or not timestamp:
            self.unsigned += 1
            return
        signed = msg_id.encode() + b"." + timestamp + b"." + body
        expected = b"v1," + base64.b64encode(hmac.digest(self.key, signed, hashlib.sha256))
        if not any(hmac.compare_digest(expected, s) for s in signatures.split()):
            self.bad_signatures += 1

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "distinct_ids": len(self.ids),
            "duplicates": self.duplicates,
            "unsigned": self.unsigned,
            "bad_signatures": self.bad_signatures,
            "body_bytes": self.body_bytes,
            "first": self.first,
            "last": self.last,
            "verifying": self.key is not None,
        }


stats = Stats()


class Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].split(b"\r\n")
            headers: dict[bytes, bytes] = {}
            for line in head[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.handle(head[0], headers, body)

    def handle(self, request_line: bytes, headers: dict[bytes, bytes], body: bytes) -> None:
        assert self.transport is not None
        method, path, _ = request_line.split(b" ", 2)
        if path == b"/stats":
            self.respond(json.dumps(stats.as_json()).encode())
        elif path == b"/reset":
            stats.reset(json.loads(body or b"{}").get("secret"))
            self.respond(b"{}")
        elif method == b"POST":
            stats.record(headers, body)
            self.transport.write(OK)
        else:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")

    def respond(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + b"content-length: %d\r\n\r\n" % len(payload)
            + payload
        )


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Http, host, port, backlog=1024)
    print(f"receiver listening on http://{host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
