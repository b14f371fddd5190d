"""The async twin's transport: httpx over httpcore HTTP/1.1 connections, pooled in O(1).

httpx's default transport (httpcore's ``AsyncConnectionPool``) rescans every pooled
connection, checking each idle socket with a ``select``, whenever a request arrives or
a response closes; with 100 concurrent streams that was 40% of the process's CPU
(``scripts/bench_proxy.py`` under py-spy), and the first token of a burst of 100
streams waited up to 2 s behind it. Its network backend (anyio) also opens and closes
a cancel scope around every read, about 10 µs per token. So:

- :class:`PoolTransport` keeps a LIFO list of idle connections per origin: a request
  takes the newest one that is still usable (one check, on that one connection) or
  opens a new one; closing a response puts its connection back if it is idle. The
  protocol itself stays httpcore's (``AsyncHTTPConnection``: h11, TLS, keep-alive).
- :class:`AsyncioBackend` is a plain asyncio ``Protocol`` under httpcore: a read that
  finds bytes buffered returns them without a timer or a task switch.

Connection count: at most ``max_connections`` requests in flight (a request waits for
a slot up to the pool timeout, then ``httpx.PoolTimeout``) and at most
``max_keepalive`` idle connections per origin.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore
import httpx

from ._transport_compat import mapped_errors, stream_transport

_HIGH_WATER = 1 << 18  # bytes buffered unread before the socket stops being read


class _Protocol(asyncio.Protocol):
    """Bytes from one socket, buffered until httpcore reads them."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.eof = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = stream_transport(transport)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True  # a consumer that stopped reading stops the upstream
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport once the buffered bytes are read

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None:
            self.error = exc
        self._wake()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        if self.drained is None or self.drained.done():
            self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self, max_bytes: int) -> bytes:
        if len(self.chunks) == 1 and self.size <= max_bytes:
            data = self.chunks.pop()
        else:
            joined = b"".join(self.chunks)
            data, rest = joined[:max_bytes], joined[max_bytes:]
            self.chunks = [rest] if rest else []
        self.size -= len(data)
        if self.paused and self.size <= _HIGH_WATER // 4 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpcore.ReadTimeout("timed out reading from the upstream"))


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport, self._protocol = transport, protocol
        # Bounds of every read, set by the twin through bound_reads(): an absolute
        # deadline (loop time), or else the longest wait of each read.
        self.deadline: float | None = None
        self.idle: float | None = None

    async def read(self, max_bytes: int,
                   timeout: float | None = None) -> bytes:  # noqa: ASYNC109 - httpcore's API
        p = self._protocol
        while not p.chunks:
            if p.eof:
                if p.error is not None:
                    raise httpcore.ReadError(str(p.error) or type(p.error).__name__)
                return b""
            loop = asyncio.get_running_loop()
            waiter = p.waiter = loop.create_future()
            at = self.deadline if self.deadline is not None else (
                loop.time() + self.idle if self.idle is not None else None)
            if timeout is not None:
                at = loop.time() + timeout if at is None else min(at, loop.time() + timeout)
            # A timer only when the read must wait, and no cancel scope: it fails the
            # waiter instead of cancelling the task.
            timer = loop.call_at(at, _expire, waiter) if at is not None else None
            try:
                await waiter
            finally:
                p.waiter = None
                if timer is not None:
                    timer.cancel()
        return p.take(max_bytes)

    async def write(self, buffer: bytes,
                    timeout: float | None = None) -> None:  # noqa: ASYNC109 - httpcore's API
        if not buffer:
            return
        p = self._protocol
        if p.eof or self._transport.is_closing():
            raise httpcore.WriteError("the upstream connection is closed")
        self._transport.write(buffer)
        if p.drained is not None and not p.drained.done():
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(p.drained)
            except TimeoutError:
                raise httpcore.WriteTimeout("timed out writing to the upstream") from None

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's API
                        ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(self._transport, self._protocol, ssl_context,
                                                 server_hostname=server_hostname)
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from None
        except (OSError, ssl.SSLError) as e:
            self._transport.close()
            raise httpcore.ConnectError(str(e)) from None
        if transport is None:  # the loop's start_tls returns None only once closed
            raise httpcore.ConnectError("the upstream closed during the TLS handshake")
        tls = self._protocol.transport = stream_transport(transport)
        return _Stream(tls, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # idle: only a close (or garbage) can be pending
            p = self._protocol
            return bool(p.chunks) or p.eof
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info in ("ssl_object", "socket"):
            return self._transport.get_extra_info(info)
        return None


def bound_reads(response: httpx.Response, *, deadline: float | None = None,
                idle: float | None = None) -> bool:
    """Bound each further read of ``response``'s body: by ``deadline`` (loop time) or
    by ``idle`` seconds per read (``httpx.ReadTimeout`` when exceeded).

    Returns False (and does nothing) if the response is not on our transport: the
    caller then bounds its reads itself.
    """
    stream = response.extensions.get("network_stream")
    if not isinstance(stream, _Stream):
        return False
    stream.deadline, stream.idle = deadline, idle
    return True


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network layer on plain asyncio transports (TCP, optional TLS)."""

    async def connect_tcp(self, host: str, port: int,
                          timeout: float | None = None,  # noqa: ASYNC109 - httpcore's API
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    _Protocol, host, port, local_addr=local)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except OSError as e:
            refused = isinstance(e, ConnectionRefusedError) or "refused" in str(e).lower()
            raise httpcore.ConnectError(("connection refused: " if refused else "") + str(e)
                                        ) from None
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return _Stream(stream_transport(transport), protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _ResponseStream(httpx.AsyncByteStream):
    """A response body; closing it gives its connection back to the pool."""

    def __init__(self, pool: PoolTransport, origin: httpcore.Origin,
                 connection: httpcore.AsyncHTTPConnection, stream: Any,
                 network: Any) -> None:
        self._pool, self._origin, self._connection = pool, origin, connection
        self._stream, self._network = stream, network
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with mapped_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        try:
            with mapped_errors():
                await self._stream.aclose()
        finally:
            if isinstance(self._network, _Stream):  # the next request sets its own
                self._network.deadline = self._network.idle = None
            if not self._released:
                self._released = True
                await self._pool.release(self._origin, self._connection)


def _key(origin: httpcore.Origin) -> tuple[bytes, bytes, int]:
    return origin.scheme, origin.host, origin.port


class PoolTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive connections, one request each at a time, found in O(1).

    Args:
        ssl_context: for ``https`` origins.
        max_connections: requests in flight at once; more wait up to the pool timeout.
        max_keepalive: idle connections kept per origin (LIFO: the warmest first).
        keepalive_expiry: seconds an idle connection is kept.
    """

    def __init__(self, ssl_context: ssl.SSLContext, max_connections: int, max_keepalive: int,
                 keepalive_expiry: float = 5.0) -> None:
        self._ssl_context = ssl_context
        self._slots = asyncio.Semaphore(max_connections)
        self._max_keepalive = max_keepalive
        self._keepalive_expiry = keepalive_expiry
        # By (scheme, host, port): httpcore's Origin compares by value but does not hash.
        self._idle: dict[tuple[bytes, bytes, int], list[httpcore.AsyncHTTPConnection]] = {}
        self._backend = AsyncioBackend()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        url = request.url
        origin = httpcore.Origin(url.raw_scheme, url.raw_host, url.port or (
            443 if url.raw_scheme == b"https" else 80))
        req = httpcore.Request(method=request.method, url=httpcore.URL(
            scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw, content=request.stream, extensions=request.extensions)
        pool_timeout = request.extensions.get("timeout", {}).get("pool")
        try:
            async with asyncio.timeout(pool_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no upstream connection slot free in time") from None
        try:
            with mapped_errors():
                connection, response = await self._send(origin, req)
        except BaseException:
            self._slots.release()
            raise
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_ResponseStream(self, origin, connection, response.stream,
                                                     response.extensions.get("network_stream")),
                              extensions=response.extensions)

    async def _send(self, origin: httpcore.Origin, req: httpcore.Request,
                    ) -> tuple[httpcore.AsyncHTTPConnection, httpcore.Response]:
        # A kept-alive connection the upstream closed just now fails before any
        # response: the request then goes once more, on a new connection (the other
        # idle ones may be as stale).
        fresh = False
        for _ in range(3):
            connection, reused = await self._checkout(origin, fresh)
            try:
                return connection, await connection.handle_async_request(req)
            except httpcore.ConnectionNotAvailable:
                continue
            except (httpcore.RemoteProtocolError, httpcore.ReadError, httpcore.WriteError):
                await connection.aclose()
                if not reused:
                    raise
                fresh = True
            except BaseException:
                await connection.aclose()
                raise
        raise httpcore.ConnectError("no usable upstream connection")

    async def _checkout(self, origin: httpcore.Origin, fresh: bool = False,
                        ) -> tuple[httpcore.AsyncHTTPConnection, bool]:
        idle = None if fresh else self._idle.get(_key(origin))
        while idle:
            connection = idle.pop()
            if connection.is_available() and not connection.has_expired():
                return connection, True
            await connection.aclose()
        return httpcore.AsyncHTTPConnection(
            origin, ssl_context=self._ssl_context, keepalive_expiry=self._keepalive_expiry,
            network_backend=self._backend), False

    async def release(self, origin: httpcore.Origin,
                      connection: httpcore.AsyncHTTPConnection) -> None:
        """A response is closed: its connection goes back to the pool if it can serve again."""
        self._slots.release()
        idle = self._idle.setdefault(_key(origin), [])
        if self._closed or not connection.is_idle() or len(idle) >= self._max_keepalive:
            await connection.aclose()
            return
        idle.append(connection)
        if len(idle) > 1 and idle[0].has_expired():  # the coldest first: expiry is by age
            await idle.pop(0).aclose()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await connection.aclose()
