"""The dispatcher's one shared ``httpx.AsyncClient``, made cheap enough per request for a
thousand deliveries a second from one process.

Measured with py-spy on a drain (bench/webhook_bench.py): httpx itself, not signing or the
database, took two thirds of the dispatcher's CPU, in three places this module removes:

- httpcore's connection pool re-scans every connection per request and, for each idle one,
  polls its socket (``is_readable``, a syscall through anyio's typed attributes); one pool
  with 48 connections cost ~2.5 ms of CPU per request. The client's transport therefore
  spreads requests over several small httpcore pools (``ShardedTransport``), always to the
  least busy one, and the dispatcher keeps no more requests in flight than there are
  connections, so no request waits in a pool's queue (which httpcore also re-scans).
- anyio's socket streams wrap every read and write in cancel scopes and deadlines; the
  streams here are plain asyncio protocols with a timer per read.
- h11 hands over a request's head and body separately and anyio sends each at once: two
  ``send`` syscalls per request. Writes are held until the response is read (HTTP/1.1 always
  reads after writing the whole request), then sent in one; a large body still goes out in
  64 KiB pieces with back-pressure.

Everything else (h11, the pool's keep-alive and connection limits, timeouts, redirects not
followed, the mapping of network errors onto ``httpx`` exceptions) is httpx's and httpcore's
own; ``network_backend`` is httpcore's extension point for the socket layer.
"""

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore
import httpx

from app.config import get_settings
from app.webhooks import targets

log = logging.getLogger("loanwatch.webhooks")

# Written bytes are sent at the latest when this many are held.
WRITE_CHUNK = 64 * 1024


class _Connection(asyncio.Protocol):
    """A TCP (or, after ``start_tls``, TLS) connection's state, fed by the event loop."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.eof = False
        self.closed = False
        self.error: Exception | None = None
        self.reader: asyncio.Future[None] | None = None
        self.paused = False
        self.drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += data
        _resolve(self.reader)

    def eof_received(self) -> bool:
        self.eof = True
        _resolve(self.reader)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed, self.error = True, exc
        _resolve(self.reader)
        _resolve(self.drained)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        _resolve(self.drained)

    @property
    def readable(self) -> bool:
        """A read would not wait: data, end of stream or a closed connection."""
        return bool(self.received) or self.eof or self.closed


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _expire(future: asyncio.Future[None], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


async def _wait(future: asyncio.Future[None], seconds: float | None, error: Exception) -> None:
    """Await ``future``, failing with ``error`` after ``seconds``: one timer, no task
    (``asyncio.wait_for`` makes a task per call)."""
    if seconds is None:
        await future
        return
    timer = asyncio.get_running_loop().call_later(seconds, _expire, future, error)
    try:
        await future
    finally:
        timer.cancel()


class AsyncioStream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, connection: _Connection) -> None:
        self._transport = transport
        self._connection = connection
        self._held: list[bytes] = []
        self._held_bytes = 0

    def _send_held(self) -> None:
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        self._held_bytes = 0
        # A connection the server closed: the read that follows reports it, as httpcore
        # expects (a server may answer and close before reading the whole request).
        if not self._transport.is_closing():
            self._transport.write(data)

    # The signatures (with ``timeout``) are httpcore's.
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        self._send_held()
        connection = self._connection
        while not connection.received:
            if connection.error is not None:
                raise httpcore.ReadError(str(connection.error) or type(connection.error).__name__)
            if connection.eof or connection.closed:
                return b""
            connection.reader = asyncio.get_running_loop().create_future()
            try:
                await _wait(connection.reader, timeout, httpcore.ReadTimeout("read timed out"))
            finally:
                connection.reader = None
        received = connection.received
        if len(received) <= max_bytes:
            data = bytes(received)
            received.clear()
        else:
            data = bytes(received[:max_bytes])
            del received[:max_bytes]
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        if self._connection.closed:
            raise httpcore.WriteError("the connection is closed")
        self._held.append(buffer)
        self._held_bytes += len(buffer)
        if self._held_bytes < WRITE_CHUNK:
            return
        self._send_held()
        connection = self._connection
        if connection.paused and not connection.closed:
            connection.drained = asyncio.get_running_loop().create_future()
            try:
                await _wait(connection.drained, timeout, httpcore.WriteTimeout("write timed out"))
            finally:
                connection.drained = None

    async def aclose(self) -> None:
        self._held.clear()
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        self._send_held()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._connection, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout("TLS handshake timed out") from None
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        if transport is None:  # the connection closed during the handshake
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        return AsyncioStream(transport, self._connection)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return self._connection.readable
        names = {"ssl_object": "ssl_object", "client_addr": "sockname",
                 "server_addr": "peername", "socket": "socket"}  # fmt: skip
        return self._transport.get_extra_info(names[info]) if info in names else None


async def _connect_first(
    loop: asyncio.AbstractEventLoop, addresses: list[str], port: int, local: Any
) -> tuple[asyncio.Transport, _Connection]:
    """A connection to the first of ``addresses`` that accepts one, as create_connection
    tries a name's addresses in turn."""
    failure: OSError = OSError(f"no address to connect to on port {port}")
    for address in addresses:
        try:
            return await loop.create_connection(_Connection, address, port, local_addr=local)
        except OSError as exc:
            failure = exc
    raise failure


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                # The name is resolved here and the connection made to the addresses checked,
                # not resolved again by create_connection: a name that answered a public
                # address to the dispatcher's check could answer a private one to a second
                # look-up (DNS rebinding). TLS still verifies the name (httpcore's start_tls).
                found = await targets.addresses(host, port)
                if not get_settings().webhook_allow_private_targets:
                    targets.refuse_private(host, found)
                transport, connection = await _connect_first(loop, found, port, local)
        except TimeoutError:
            raise httpcore.ConnectTimeout("connect timed out") from None
        except targets.TargetNotAllowed as exc:
            raise httpcore.ConnectError(f"target not allowed: {exc}") from None
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        # asyncio sets TCP_NODELAY itself, as anyio does.
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AsyncioStream(transport, connection)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are sent over TCP only")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ShardedTransport(httpx.AsyncBaseTransport):
    """httpx's own transports, several small pools in one, each request to the least busy."""

    def __init__(self, shards: int, connections_per_shard: int) -> None:
        limits = httpx.Limits(
            max_connections=connections_per_shard, max_keepalive_connections=connections_per_shard
        )
        self._shards = [httpx.AsyncHTTPTransport(limits=limits) for _ in range(shards)]
        self._busy = [0] * shards
        backend = AsyncioBackend()
        for shard in self._shards:
            pool = getattr(shard, "_pool", None)
            if isinstance(pool, httpcore.AsyncConnectionPool):
                pool._network_backend = backend
            else:  # a future httpx: still correct, only slower
                log.warning("httpx transport without an httpcore pool: anyio sockets are used")

    @property
    def network_backends(self) -> list[object]:
        return [getattr(getattr(s, "_pool", None), "_network_backend", None) for s in self._shards]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # Busy until the response is closed, not when its head arrives: a receiver trickling
        # its body holds the connection for up to the timeout, and a healthy endpoint's
        # requests sent to that pool as if it were free waited there until they timed out,
        # then went again after later events of their loans (a re-verifier's).
        busy = self._busy
        index = busy.index(min(busy))
        busy[index] += 1
        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            busy[index] -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Releasing(response.stream, busy, index)
        return response

    async def aclose(self) -> None:
        await asyncio.gather(*(shard.aclose() for shard in self._shards))


class _Releasing(httpx.AsyncByteStream):
    """A response body that frees its pool's place in ``busy`` once, when closed."""

    def __init__(self, stream: httpx.AsyncByteStream, busy: list[int], index: int) -> None:
        self._stream, self._busy, self._index = stream, busy, index
        self._open = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._open:
                self._open = False
                self._busy[self._index] -= 1


class _NoCookies(httpx.Cookies):
    """Receivers' ``Set-Cookie`` is ignored: a delivery carries nothing a receiver set before,
    and parsing for cookies took ~8 % of the client's CPU per response."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass


def make_client(*, timeout: float, shards: int, connections_per_shard: int) -> httpx.AsyncClient:
    """One client for every delivery of this process: no redirects followed, no cookies kept,
    the timeout on every phase, connecting at most 3 s."""
    client = httpx.AsyncClient(
        transport=ShardedTransport(shards, connections_per_shard),
        timeout=httpx.Timeout(timeout, connect=3.0),
        follow_redirects=False,
    )
    # httpx has no switch for its cookie jar; its setter would copy into a plain one.
    client._cookies = _NoCookies()
    return client
