"""A light streaming client for measurements: raw HTTP/1.1 on asyncio, one connection a stream.

It never de-frames: the benchmark agents and the fake upstream's ``clock`` script send
tokens that are their own production wall time (``"1712345678.123456 "``), and every
timestamp in each read counts as a token with its own lag (receive wall time minus
production wall time: same machine, same clock). So SSE and NDJSON, coalesced deltas
or not, are measured alike. TTFC is request written → first token read
(``perf_counter``).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._process import HOST

TIMESTAMP = re.compile(rb"\d{10}\.\d{6}")
END_OF_BODY = b"\r\n0\r\n\r\n"  # the last chunk of a chunked body


def http_request(port: int, path: str, body: Mapping[str, Any], *,
                 headers: Mapping[str, str] | None = None) -> bytes:
    """A raw ``POST`` of JSON ``body`` to ``path`` (``Connection: close``)."""
    payload = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: application/json\r\n{extra}"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n")
    return head.encode() + payload


def chat_request(port: int, options: Mapping[str, Any], agent: str = "bench") -> bytes:
    """The raw native SSE chat request for one stream of ``agent`` with ``options``."""
    return http_request(port, "/v1/chat", {"agent": agent, "message": "bench",
                                           "options": dict(options)},
                        headers={"Accept": "text/event-stream"})


class StreamClient(asyncio.Protocol):
    """One streamed response read straight off the socket.

    Args:
        request: the raw request to send.
        keep_lags: record every token's lag (paced phases only).
        rcvlowat: if set, ``SO_RCVLOWAT``: the socket reports readable only with that
            many bytes queued (or at EOF), so an unpaced stream costs the client one
            wake-up per many frames instead of one per frame.
    """

    def __init__(self, request: bytes, keep_lags: bool, rcvlowat: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.keep_lags = keep_lags
        self.rcvlowat = rcvlowat
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.sent_at = 0.0
        self.ttfc: float | None = None
        self.tokens = 0
        self.complete = False
        self.lags: list[float] = []
        self.first_token: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._head = b""
        self._carry = b""
        self._tail = b""
        self._in_body = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.rcvlowat:
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, self.rcvlowat)

    def send(self) -> None:
        """Write the request and start the TTFC clock."""
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now, wall = time.perf_counter(), time.time()
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self._head[9:12])
            data, self._head, self._in_body = self._head[end + 4:], b"", True
        buf = self._carry + data if self._carry else data
        # Tokens never contain a newline, so everything before the last one is whole.
        cut = buf.rfind(b"\n") + 1
        self._carry = buf[cut:]
        stamps = TIMESTAMP.findall(buf, 0, cut)
        if stamps:
            if self.ttfc is None:
                self.ttfc = now - self.sent_at
                self.first_token.set_result(None)
            self.tokens += len(stamps)
            if self.keep_lags:
                self.lags.extend([wall - float(s) for s in stamps])
        self._tail = (self._tail + data)[-len(END_OF_BODY):]

    def connection_lost(self, exc: Exception | None) -> None:
        self.complete = self.complete or self._tail.endswith(END_OF_BODY)
        for fut in (self.first_token, self.closed):
            if not fut.done():
                fut.set_result(None)

    def close(self) -> None:
        """Close the connection (the server sees a disconnect)."""
        if self.transport is not None:
            self.transport.close()


class LeavingClient(StreamClient):
    """A stream client that closes its connection after ``leave_after`` tokens.

    ``left_at`` is the wall time of the close (the agent's clock: same machine).
    """

    def __init__(self, request: bytes, leave_after: int) -> None:
        super().__init__(request, keep_lags=False)
        self.leave_after = leave_after
        self.left_at: float | None = None
        self.left: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.left_at is None and self.tokens >= self.leave_after:
            self.left_at = time.time()
            self.close()  # FIN, as a browser tab closing; the server sees it on a write
            self.left.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.left.done():
            self.left.set_result(None)


async def open_streams(port: int, count: int, request: bytes, *, keep_lags: bool = False,
                       rcvlowat: int = 0, connect_limit: int = 200,
                       send_at_once: bool = True) -> list[StreamClient]:
    """Connect ``count`` clients and send each one ``request``.

    With ``send_at_once`` every connection is made first and all requests are written
    together; otherwise each request goes out as soon as it is connected.
    """
    loop = asyncio.get_running_loop()
    clients = [StreamClient(request, keep_lags, rcvlowat) for _ in range(count)]
    gate = asyncio.Semaphore(connect_limit)

    async def connect(client: StreamClient) -> None:
        async with gate:
            await loop.create_connection(lambda: client, HOST, port)
        if not send_at_once:
            client.send()

    try:
        await asyncio.gather(*(connect(c) for c in clients))
    except BaseException:
        for c in clients:
            c.close()
        raise
    if send_at_once:
        for c in clients:
            c.send()
    return clients


async def wait_all(clients: Sequence[StreamClient], what: str, max_wait: float,
                   pick: Callable[[StreamClient], asyncio.Future[None]],
                   check_status: bool = True) -> None:
    """Wait (bounded) for ``pick(client)`` of every client; close all on failure.

    Raises:
        RuntimeError: ``check_status`` and a stream's status was not 200.
    """
    try:
        await asyncio.wait_for(asyncio.gather(*(pick(c) for c in clients)), max_wait)
    except BaseException:
        for c in clients:
            c.close()
        raise
    bad = [c for c in clients if c.status != 200]
    if check_status and bad:
        raise RuntimeError(f"{what}: {len(bad)} of {len(clients)} streams got status "
                           f"{sorted({c.status for c in bad})}")
