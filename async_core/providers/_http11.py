"""One upstream HTTP/1.1 keep-alive connection: our request bytes, httptools' C parser.

The async twin's pool (``_transport.PoolTransport``) used httpcore's connection over
h11; at 100 streams py-spy put httpcore + h11 + their per-read context managers at
about a quarter of the async proxy's samples, every token paying h11's pure-Python
chunked reader and state machine and three async generators. The peers that beat us
never parse that way: uvicorn parses its requests with httptools, and the Flask
passthrough reads the chunks in urllib3. So here:

- the request head is written in one ``write`` (httpx has already set ``Host`` and
  ``Content-Length``);
- ``data_received`` feeds httptools, whose callbacks collect the status, the headers
  and each body piece into a buffer; a body read that finds bytes there returns them
  at once, with no future, timer or task switch;
- the parser, not the framing, decides keep-alive (``should_keep_alive``), and a
  connection is reused only when its response was read to its end.

Errors are httpcore's exception types (``_transport_compat.mapped_errors`` turns them
into httpx's), with httpcore's messages where the twins and the tests read them.

States: ``IDLE`` (no request) → ``ACTIVE`` (a request sent, its response being read)
→ ``IDLE`` again when the body was read to its end on a keep-alive response, else
``CLOSED``. Anything the upstream sends while ``IDLE`` (a close, or garbage) makes the
connection unusable.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import httpcore
import httptools

from ._transport_compat import stream_transport

__all__ = ["Connection"]

_HIGH_WATER = 1 << 18  # body bytes buffered unread before the socket stops being read
_INCOMPLETE = "peer closed connection without sending complete message body"


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpcore.ReadTimeout("timed out reading from the upstream"))


class Connection(asyncio.Protocol):
    """One connection to ``origin``, one request at a time (what the pool holds).

    Args:
        origin: scheme, host and port.
        ssl_context: for ``https``.
        keepalive_expiry: seconds an idle connection stays usable.
    """

    def __init__(self, origin: httpcore.Origin, ssl_context: ssl.SSLContext,
                 keepalive_expiry: float) -> None:
        self._origin, self._ssl, self._expiry = origin, ssl_context, keepalive_expiry
        self._transport: asyncio.Transport | None = None
        self._parser: Any = None
        self._state = "IDLE"
        self._expires_at: float | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._stray = False
        self._reset()
        # Bounds of each body read, set through bound_reads(): an absolute deadline
        # (loop time), or else the longest wait of each read.
        self.deadline: float | None = None
        self.idle: float | None = None

    def _reset(self) -> None:
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_done = self._complete = self._eof = self._paused = self._framed = False
        self._keep_alive = False
        self._body: list[bytes] = []
        self._size = 0
        self._error: Exception | None = None

    # -- the pool's view ---------------------------------------------------------

    def is_available(self) -> bool:
        """Whether a request may be sent on it now."""
        return self._state == "IDLE" and not self._eof and not self._stray

    def has_expired(self) -> bool:
        """Whether it sat idle too long, or the upstream closed (or wrote to) it."""
        if self._state != "IDLE":
            return False
        late = self._expires_at is not None and time.monotonic() > self._expires_at
        return late or self._eof or self._stray or self._error is not None

    def is_idle(self) -> bool:
        """Whether it finished its response and may serve another request."""
        return self._state == "IDLE"

    async def aclose(self) -> None:
        """Close the socket (the upstream sees the disconnect)."""
        self._state = "CLOSED"
        if self._transport is not None:
            self._transport.close()

    # -- one request ---------------------------------------------------------------

    async def request(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes, timeouts: dict[str, float | None],
                      ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Send a request, wait for the response head; return its status and headers.

        Raises:
            httpcore.ConnectError, ConnectTimeout: the connection could not be opened.
            httpcore.RemoteProtocolError: the upstream closed or sent garbage first.
        """
        if self._transport is None:
            await self._connect(timeouts.get("connect"))
        assert self._transport is not None
        self._state = "ACTIVE"
        self._reset()
        self._expires_at = None
        self._parser = httptools.HttpResponseParser(self)
        lines = [method, b" ", target, b" HTTP/1.1\r\n"]
        for name, value in headers:
            lines += [name, b": ", value, b"\r\n"]
        lines += [b"\r\n", body]
        if self._transport.is_closing():
            raise httpcore.WriteError("the upstream connection is closed")
        self._transport.write(b"".join(lines))
        read = timeouts.get("read")
        while not self._head_done:
            if self._eof or self._error is not None:
                raise self._error or httpcore.RemoteProtocolError(
                    "Server disconnected without sending a response.")
            await self._wait(None if read is None else asyncio.get_running_loop().time() + read)
        return self._status, self._headers

    async def read_body(self) -> bytes:
        """The next body bytes (``b""`` at the end of the body).

        Raises:
            httpcore.ReadTimeout: a bound of ``deadline``/``idle`` passed first.
            httpcore.RemoteProtocolError: the upstream closed before the body's end.
        """
        while not self._body:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            if self._eof:
                if not self._framed:  # no length, not chunked: the close ends it
                    self._complete = True
                    return b""
                raise httpcore.RemoteProtocolError(_INCOMPLETE + ": incomplete chunked read")
            loop = asyncio.get_running_loop()
            at = self.deadline if self.deadline is not None else (
                loop.time() + self.idle if self.idle is not None else None)
            await self._wait(at)
        data = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        self._size = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    def release(self) -> None:
        """The response is done with: back to ``IDLE`` if read to its keep-alive end."""
        self.deadline = self.idle = None
        reusable = (self._state == "ACTIVE" and self._complete and not self._body
                    and not self._stray and not self._eof)
        if reusable and self._keep_alive:
            self._state = "IDLE"
            self._expires_at = time.monotonic() + self._expiry
        else:
            self._state = "CLOSED"
            if self._transport is not None:
                self._transport.close()

    async def _wait(self, at: float | None) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        # A timer only when the read must wait, and no cancel scope: it fails the
        # waiter instead of cancelling the task.
        timer = loop.call_at(at, _expire, waiter) if at is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def _connect(self, timeout: float | None) -> None:  # noqa: ASYNC109 - httpcore's name
        loop = asyncio.get_running_loop()
        host, port = self._origin.host.decode("ascii"), self._origin.port
        tls = self._ssl if self._origin.scheme == b"https" else None
        try:
            async with asyncio.timeout(timeout):
                transport, _ = await loop.create_connection(
                    lambda: self, host, port, ssl=tls, server_hostname=host if tls else None)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except (OSError, ssl.SSLError) as e:
            refused = isinstance(e, ConnectionRefusedError) or "refused" in str(e).lower()
            raise httpcore.ConnectError(("connection refused: " if refused else "") + str(e)
                                        ) from None
        self._transport = stream_transport(transport)

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = stream_transport(transport)

    def data_received(self, data: bytes) -> None:
        if self._state != "ACTIVE" or self._complete:
            self._stray = True  # unasked-for bytes: the connection is not reusable
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._error = httpcore.RemoteProtocolError(f"malformed upstream response: {e}")
            if self._transport is not None:
                self._transport.close()
        if self._size > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True  # a consumer that stopped reading stops the upstream
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the transport; the buffered bytes stay readable

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None and self._error is None and not self._complete:
            self._error = httpcore.ReadError(str(exc) or type(exc).__name__)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        names = {name.lower() for name, _ in self._headers}
        self._framed = b"content-length" in names or b"transfer-encoding" in names
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._size += len(body)

    def on_message_complete(self) -> None:
        self._complete = True
        # Asked here: llhttp forgets the answer once the callback returns.
        self._keep_alive = bool(self._parser.should_keep_alive())
