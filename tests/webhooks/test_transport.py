"""The dispatcher's HTTP client (app/webhooks/transport.py) against a raw asyncio server that
shows what went over the wire: connections, requests, and when the server closes."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from app.config import get_settings
from app.webhooks import transport


@pytest.fixture(autouse=True)
def loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The servers here listen on loopback, which deliveries refuse by default."""
    monkeypatch.setattr(get_settings(), "webhook_allow_private_targets", True)


@dataclass
class Server:
    port: int = 0
    connections: int = 0
    bodies: list[bytes] = field(default_factory=list)
    cookies_seen: list[str | None] = field(default_factory=list)
    # After answering, close the connection this long after (None: keep it alive).
    close_after: float | None = None
    # Wait this long before answering.
    delay: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = dict(
                    line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if line
                )
                headers = {k.lower(): v for k, v in headers.items()}
                self.bodies.append(await reader.readexactly(int(headers["content-length"])))
                self.cookies_seen.append(headers.get("cookie"))
                await asyncio.sleep(self.delay)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
                    b"set-cookie: session=abc; Path=/\r\n\r\nok"
                )
                await writer.drain()
                if self.close_after is not None:
                    await asyncio.sleep(self.close_after)
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[Server]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


@asynccontextmanager
async def client(seconds: float = 5.0) -> AsyncIterator[httpx.AsyncClient]:
    c = transport.make_client(timeout=seconds, shards=2, connections_per_shard=2)
    try:
        yield c
    finally:
        await c.aclose()


async def test_the_client_uses_asyncio_sockets_in_every_pool() -> None:
    sharded = transport.ShardedTransport(3, 2)
    assert all(isinstance(b, transport.AsyncioBackend) for b in sharded.network_backends)
    await sharded.aclose()


async def test_keep_alive_reuses_a_connection_and_no_cookie_is_kept() -> None:
    async with serving(Server()) as server, client() as c:
        for i in range(5):
            response = await c.post(server.url, content=b"body %d" % i)
            assert (response.status_code, response.text) == (200, "ok")
        assert server.bodies == [b"body %d" % i for i in range(5)]
        assert server.connections == 1
        assert server.cookies_seen == [None] * 5


async def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async with serving(Server(close_after=0.0)) as server, client() as c:
        for _ in range(3):
            assert (await c.post(server.url, content=b"x")).status_code == 200
            await asyncio.sleep(0.05)  # the server's close arrives while the connection idles
        assert server.connections == 3


async def test_concurrent_requests_spread_over_the_pools() -> None:
    async with serving(Server(delay=0.05)) as server, client() as c:
        responses = await asyncio.gather(*(c.post(server.url, content=b"%d" % i) for i in range(4)))
        assert [r.status_code for r in responses] == [200] * 4
        assert server.connections == 4  # 2 pools x 2 connections, none waited


async def test_a_large_body_arrives_whole() -> None:
    body = bytes(range(256)) * 1024  # 256 KiB: sent in 64 KiB pieces
    async with serving(Server()) as server, client() as c:
        assert (await c.post(server.url, content=body)).status_code == 200
        assert server.bodies == [body]


async def test_a_slow_answer_times_out_and_a_closed_port_fails_to_connect() -> None:
    async with serving(Server(delay=1.0)) as server, client(seconds=0.2) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post(server.url, content=b"x")
    port = server.port  # closed now
    async with client() as c:
        with pytest.raises(httpx.ConnectError):
            await c.post(f"http://127.0.0.1:{port}/hooks", content=b"x")


async def test_a_pool_is_busy_until_its_answer_is_closed_not_until_its_head() -> None:
    """A receiver trickling its body holds its connection: counted free once the head had
    arrived, its pool took the next request, which waited for the connection until it timed
    out (a re-verifier's: a healthy endpoint's deliveries logged as timed out, then sent again
    after later events of their loans)."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        try:
            for _ in range(1000):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.2)
        except ConnectionError:
            pass
        finally:
            writer.close()

    slow = await asyncio.start_server(trickle, "127.0.0.1", 0)
    slow_url = f"http://127.0.0.1:{slow.sockets[0].getsockname()[1]}/hooks"
    c = transport.make_client(timeout=3.0, shards=2, connections_per_shard=1)
    try:
        async with serving(Server()) as healthy, c.stream("POST", slow_url, content=b"{}") as held:
            assert held.status_code == 200  # the head is in; the body trickles
            # Sent to the held pool, it waits for the connection and times out (3 s).
            answer = await c.post(healthy.url, content=b"{}")
            assert answer.status_code == 200
    finally:
        await c.aclose()
        slow.close()
