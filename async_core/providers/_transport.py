"""The async twin's transport: httpx requests on our HTTP/1.1 connections, pooled in O(1).

httpx's default transport (httpcore's ``AsyncConnectionPool``) rescans every pooled
connection, checking each idle socket with a ``select``, whenever a request arrives or
a response closes; with 100 concurrent streams that was 40% of the process's CPU
(``scripts/bench_proxy.py`` under py-spy), and the first token of a burst of 100
streams waited up to 2 s behind it. Its connections (h11 over anyio) then cost about
a quarter of the samples per token. So:

- :class:`PoolTransport` keeps a LIFO list of idle connections per origin: a request
  takes the newest one that is still usable (one check, on that one connection) or
  opens a new one; closing a response puts its connection back if it is idle.
- each connection is ``_http11.Connection``: a plain asyncio ``Protocol`` parsing the
  response with httptools (TLS by the loop); a body read that finds bytes buffered
  returns them without a timer or a task switch.

Connection count: at most ``max_connections`` requests in flight (a request waits for
a slot up to the pool timeout, then ``httpx.PoolTimeout``) and at most
``max_keepalive`` idle connections per origin.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import httpcore
import httpx

from ._http11 import Connection
from ._transport_compat import mapped_error, mapped_errors

__all__ = ["PoolTransport", "bound_reads"]


def bound_reads(response: httpx.Response, *, deadline: float | None = None,
                idle: float | None = None) -> bool:
    """Bound each further read of ``response``'s body: by ``deadline`` (loop time) or
    by ``idle`` seconds per read (``httpx.ReadTimeout`` when exceeded).

    Returns False (and does nothing) if the response is not on our transport: the
    caller then bounds its reads itself.
    """
    stream = response.extensions.get("network_stream")
    if not isinstance(stream, Connection):
        return False
    stream.deadline, stream.idle = deadline, idle
    return True


class _ResponseStream(httpx.AsyncByteStream):
    """A response body; closing it gives its connection back to the pool.

    Its own async iterator (no generator frames): one call per chunk read.
    """

    def __init__(self, pool: PoolTransport, key: tuple[bytes, bytes, int],
                 connection: Connection) -> None:
        self._pool, self._key, self._connection = pool, key, connection
        self._released = False

    def __aiter__(self) -> _ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            data = await self._connection.read_body()
        except httpcore.ReadTimeout as e:  # the common failure, spelled out
            raise httpx.ReadTimeout(str(e)) from e
        except Exception as e:
            raise mapped_error(e) from e
        if not data:
            raise StopAsyncIteration
        return data

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._connection.release()
            await self._pool.release(self._key, self._connection)


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
        self._idle: dict[tuple[bytes, bytes, int], list[Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        url = request.url
        origin = httpcore.Origin(url.raw_scheme, url.raw_host, url.port or (
            443 if url.raw_scheme == b"https" else 80))
        if origin.scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        body = b"".join([part async for part in request.stream])
        timeouts = request.extensions.get("timeout", {})
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no upstream connection slot free in time") from None
        try:
            with mapped_errors():
                connection, status, headers = await self._send(
                    origin, request.method.encode("ascii"), url.raw_path,
                    request.headers.raw, body, timeouts)
        except BaseException:
            self._slots.release()
            raise
        return httpx.Response(status_code=status, headers=headers,
                              stream=_ResponseStream(self, _key(origin), connection),
                              extensions={"network_stream": connection,
                                          "http_version": b"HTTP/1.1"})

    async def _send(self, origin: httpcore.Origin, method: bytes, target: bytes,
                    headers: list[tuple[bytes, bytes]], body: bytes, timeouts: dict[str, Any],
                    ) -> tuple[Connection, int, list[tuple[bytes, bytes]]]:
        # A kept-alive connection the upstream closed just now fails before any
        # response: the request then goes once more, on a new connection (the other
        # idle ones may be as stale).
        fresh = False
        for _ in range(2):
            connection, reused = await self._checkout(origin, fresh)
            try:
                status, head = await connection.request(method, target, headers, body,
                                                        timeouts)
                return connection, status, head
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
                        ) -> tuple[Connection, bool]:
        idle = None if fresh else self._idle.get(_key(origin))
        while idle:
            connection = idle.pop()
            if connection.is_available() and not connection.has_expired():
                return connection, True
            await connection.aclose()
        return Connection(origin, self._ssl_context, self._keepalive_expiry), False

    async def release(self, key: tuple[bytes, bytes, int], connection: Connection) -> None:
        """A response is closed: its connection goes back to the pool if it can serve again."""
        self._slots.release()
        idle = self._idle.setdefault(key, [])
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
