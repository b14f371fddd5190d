"""The async twin's transport (``_transport.PoolTransport`` on ``AsyncioBackend``),
against a real HTTP/1.1 server on a loopback port: reuse, the in-flight limit, the
one resend, backpressure, per-read deadlines, cancellation and the keep-alive limit.

The server runs in the test's own event loop (asyncio streams); it counts the
connections it accepts and notes when it sees each one closed by the client.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from async_core.providers._transport import PoolTransport, bound_reads

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


@pytest.fixture(params=[pytest.param("asyncio", id="asyncio"),
                        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """Every scenario on both loops: uvloop's transports subclass no asyncio transport
    class (issue 16 item 0), and uvicorn picks uvloop whenever it is installed."""
    return request.param

BIG = 32 << 20  # bytes /big sends
PIECE = 64 << 10


@dataclass
class _Conn:
    id: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


class Upstream:
    """An HTTP/1.1 server on 127.0.0.1, in this loop. Routes (by path):

    - ``/``: ``conn <id>`` with a Content-Length, kept alive.
    - ``/hold``: a chunked ``hello``, then the rest once ``gate(id)`` is set.
    - ``/stall``: a chunked ``hello``, then silence until the client closes.
    - ``/trickle``: one small chunk every 50 ms, until the client closes.
    - ``/big``: ``BIG`` bytes, counted in ``sent`` as they are accepted for sending.
    - ``/once``: ``conn <id>``, then the next request on that connection is read
      and answered by a close (the race of a keep-alive close and a new request).
    - ``/idle-close``: ``conn <id>``, then the server closes the idle connection.
    - ``/hangup``: the request is read and the connection closed, no response.
    - ``/silent``: the request is read and never answered.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.accepted = 0
        self.closed_at: dict[int, float] = {}  # id -> loop time the server saw EOF
        self.closed = asyncio.Condition()
        self.sent = 0
        self.gates: dict[int, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0,
                                                  ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        if self._tasks:  # handlers whose client closed end on their own
            await asyncio.wait(list(self._tasks), timeout=0.5)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def gate(self, conn_id: int) -> asyncio.Event:
        return self.gates.setdefault(conn_id, asyncio.Event())

    async def wait_closed(self, conn_id: int, timeout: float = 1.0) -> float:  # noqa: ASYNC109
        """The loop time the server saw ``conn_id`` closed by the client (fails after timeout)."""
        async with asyncio.timeout(timeout), self.closed:
            await self.closed.wait_for(lambda: conn_id in self.closed_at)
        return self.closed_at[conn_id]

    async def _saw_eof(self, conn: _Conn) -> None:
        self.closed_at.setdefault(conn.id, asyncio.get_running_loop().time())
        async with self.closed:
            self.closed.notify_all()

    async def _connected(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        conn = _Conn(self.accepted, reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                path = await _read_request(reader)
                if path is None:
                    await self._saw_eof(conn)
                    return
                if not await self._route(conn, path):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            await self._saw_eof(conn)
        except RuntimeError:  # uvloop: a write to a transport the client's close closed
            if not writer.is_closing():
                raise
            await self._saw_eof(conn)
        except asyncio.CancelledError:
            return  # the test is over: asyncio 3.11 would log a cancelled callback task
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _route(self, conn: _Conn, path: str) -> bool:
        """Answer one request; False: the connection is done."""
        w = conn.writer
        if path in ("/", "/once", "/idle-close"):
            body = f"conn {conn.id}".encode()
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await w.drain()
            if path == "/once":
                if await _read_request(conn.reader) is not None:
                    return False  # the request arrived: close without a response
                await self._saw_eof(conn)
                return False
            return path == "/"
        if path in ("/hangup", "/silent"):
            if path == "/silent":
                await conn.reader.read()
                await self._saw_eof(conn)
            return False
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        if path == "/big":
            # A small send buffer: what the server manages to send is then mostly what
            # the client side holds (its socket's receive buffer, and our buffer).
            w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PIECE)
            w.write(b"%x\r\n" % BIG)
            piece = b"x" * PIECE
            for _ in range(BIG // PIECE):
                w.write(piece)
                self.sent += PIECE
                await w.drain()
            w.write(b"\r\n0\r\n\r\n")
            await w.drain()
            return True
        w.write(b"5\r\nhello\r\n")
        await w.drain()
        if path == "/hold":
            await self.gate(conn.id).wait()
            w.write(b"5\r\nworld\r\n0\r\n\r\n")
            await w.drain()
            return True
        if path == "/stall":
            await conn.reader.read()  # b"" at the client's close
            await self._saw_eof(conn)
            return False
        assert path == "/trickle", path
        while True:
            await asyncio.sleep(0.05)
            # Checked right before the write: uvloop raises RuntimeError on a write to a
            # transport the client's close has already closed (asyncio ignores it).
            if conn.reader.at_eof() or w.is_closing():
                break
            w.write(b"1\r\n.\r\n")
            await w.drain()
        await self._saw_eof(conn)
        return False


async def _read_request(reader: asyncio.StreamReader) -> str | None:
    """The path of the next request (its body read and dropped), or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and int(value):
            await reader.readexactly(int(value))
    return lines[0].split(" ")[1]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """A fresh server for one test."""
    async with Upstream() as u:
        yield u


def _client(max_connections: int = 10, max_keepalive: int = 10, pool: float = 2.0,
            read: float | None = 2.0, keepalive_expiry: float = 5.0,
            tls: ssl.SSLContext | None = None) -> httpx.AsyncClient:
    transport = PoolTransport(tls or ssl.create_default_context(),
                              max_connections=max_connections,
                              max_keepalive=max_keepalive, keepalive_expiry=keepalive_expiry)
    return httpx.AsyncClient(transport=transport,
                             timeout=httpx.Timeout(2.0, read=read, pool=pool))


def _idle(client: httpx.AsyncClient) -> int:
    """Connections idle in the client's pool (its private list: nothing else shows it)."""
    transport = client._transport
    assert isinstance(transport, PoolTransport)
    return sum(len(connections) for connections in transport._idle.values())


async def _get(client: httpx.AsyncClient, url: str) -> str:
    response = await client.get(url)
    assert response.status_code == 200
    return response.text


# 1. Reuse -------------------------------------------------------------------------

async def test_sequential_requests_share_one_connection(upstream: Upstream) -> None:
    """Two requests in turn to one origin: one TCP connection, still open after."""
    async with _client() as client:
        assert await _get(client, upstream.url + "/") == "conn 1"
        assert await _get(client, upstream.url + "/") == "conn 1"
        assert upstream.accepted == 1 and not upstream.closed_at
    await upstream.wait_closed(1)  # the client's close closes its pool


async def test_idle_connections_are_reused_newest_first(upstream: Upstream) -> None:
    """Two connections go idle, 1 then 2: the next request takes 2 (LIFO), then 1."""
    async with _client() as client:
        first = await client.send(client.build_request("GET", upstream.url + "/"), stream=True)
        second = await client.send(client.build_request("GET", upstream.url + "/"), stream=True)
        assert upstream.accepted == 2
        assert (await first.aread(), await second.aread()) == (b"conn 1", b"conn 2")
        assert await _get(client, upstream.url + "/") == "conn 2"
        held = await client.send(client.build_request("GET", upstream.url + "/"), stream=True)
        assert await _get(client, upstream.url + "/") == "conn 1"  # 2 is busy: 1 next
        assert await held.aread() == b"conn 2"
        assert upstream.accepted == 2


# 2. The in-flight limit -----------------------------------------------------------

async def test_a_request_beyond_max_connections_gets_pool_timeout(upstream: Upstream) -> None:
    """Two held responses take both slots: a third waits the pool timeout, opens nothing."""
    async with _client(max_connections=2, pool=0.3) as client:
        held = [await client.send(client.build_request("GET", upstream.url + "/hold"),
                                  stream=True) for _ in range(2)]
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(httpx.PoolTimeout):
            await client.get(upstream.url + "/")
        assert 0.25 <= loop.time() - start < 1.0
        assert upstream.accepted == 2
        upstream.gate(1).set()
        upstream.gate(2).set()
        assert [await r.aread() for r in held] == [b"helloworld"] * 2
        assert await _get(client, upstream.url + "/") == "conn 2"  # the slots came back


async def test_a_waiting_request_proceeds_when_a_slot_frees(upstream: Upstream) -> None:
    """The third request waits while two are held, and goes as soon as one finishes."""
    async with _client(max_connections=2, pool=2.0) as client:
        held = [await client.send(client.build_request("GET", upstream.url + "/hold"),
                                  stream=True) for _ in range(2)]
        third = asyncio.create_task(_get(client, upstream.url + "/"))
        await asyncio.sleep(0.2)
        assert not third.done()
        loop = asyncio.get_running_loop()
        upstream.gate(1).set()
        assert await held[0].aread() == b"helloworld"
        start = loop.time()
        assert await asyncio.wait_for(third, 1.0) == "conn 1"  # on the freed connection
        assert loop.time() - start < 0.5
        upstream.gate(2).set()
        await held[1].aread()
        assert upstream.accepted == 2


# 3. Stale connections, the one resend, and errors ---------------------------------

async def test_a_connection_closed_while_idle_is_not_used(upstream: Upstream) -> None:
    """The server closed the idle connection: the next request opens a new one."""
    async with _client() as client:
        assert await _get(client, upstream.url + "/idle-close") == "conn 1"
        await asyncio.sleep(0.05)  # the server's FIN arrives
        assert await _get(client, upstream.url + "/") == "conn 2"
        assert upstream.accepted == 2


async def test_a_reused_connection_that_fails_before_a_response_is_resent(
        upstream: Upstream) -> None:
    """The server closes a kept-alive connection as the next request arrives: that
    request goes once more, on a new connection, and the caller sees only success."""
    async with _client(max_connections=1) as client:
        assert await _get(client, upstream.url + "/once") == "conn 1"
        assert await _get(client, upstream.url + "/") == "conn 2"
        assert upstream.accepted == 2
        assert await _get(client, upstream.url + "/") == "conn 2"  # the slot came back


async def test_the_resend_opens_a_new_connection_when_every_idle_one_is_stale(
        upstream: Upstream) -> None:
    """Three kept-alive connections that all close at the next request: the request
    fails on the newest, then goes on a new connection, not on the other stale ones."""
    async with _client() as client:
        responses = [await client.send(client.build_request("GET", upstream.url + "/once"),
                                       stream=True) for _ in range(3)]
        assert [await r.aread() for r in responses] == [b"conn 1", b"conn 2", b"conn 3"]
        assert await _get(client, upstream.url + "/") == "conn 4"
        assert upstream.accepted == 4


async def test_a_fresh_connection_that_fails_raises_without_resend(upstream: Upstream) -> None:
    """A new connection closed with no response: httpx.RemoteProtocolError, one connection."""
    async with _client(max_connections=1) as client:
        for _ in range(2):  # the failure gives its slot back
            with pytest.raises(httpx.RemoteProtocolError, match="disconnected"):
                await client.get(upstream.url + "/hangup")
        assert upstream.accepted == 2
        assert await _get(client, upstream.url + "/") == "conn 3"


async def test_a_closed_port_is_a_readable_connect_error() -> None:
    """Nothing listening: httpx.ConnectError saying so, and the slot is free again."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
    async with _client(max_connections=1, pool=0.5) as client:
        for _ in range(2):
            with pytest.raises(httpx.ConnectError, match="connection refused"):
                await client.get(f"http://127.0.0.1:{port}/")


# 4. Backpressure ------------------------------------------------------------------

async def _stalled(upstream: Upstream, limit: float = 2.0) -> int:
    """``upstream.sent`` once it stopped growing for 0.2 s (or after ``limit`` s)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    last, still = -1, 0
    while loop.time() < end and still < 4:
        await asyncio.sleep(0.05)
        still = still + 1 if upstream.sent == last else 0
        last = upstream.sent
    return upstream.sent


async def test_a_consumer_that_stops_reading_stops_the_upstream(upstream: Upstream) -> None:
    """32 MB offered, nothing read: the server's sends block after a bounded amount;
    reading resumes them and every byte arrives."""
    async with _client(read=2.0) as client:
        response = await client.send(client.build_request("GET", upstream.url + "/big"),
                                     stream=True)
        stalled = await _stalled(upstream)
        assert 0 < stalled < 4 << 20, stalled
        received = 0
        async for chunk in response.aiter_raw():
            received += len(chunk)
        await response.aclose()
        assert received == BIG and upstream.sent == BIG


# 5. Per-read deadlines ------------------------------------------------------------

async def test_idle_bound_fails_a_stalled_read(upstream: Upstream) -> None:
    """Headers and a chunk, then silence: with ``bound_reads(idle=0.2)`` (and no read
    timeout at all) the next read is httpx.ReadTimeout after about 0.2 s; the
    connection is closed, not pooled."""
    async with _client(read=None) as client:
        response = await client.send(client.build_request("GET", upstream.url + "/stall"),
                                     stream=True)
        assert bound_reads(response, idle=0.2)
        chunks = response.aiter_raw()
        assert await anext(chunks) == b"hello"
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.timeout(2.0):
            with pytest.raises(httpx.ReadTimeout):
                await anext(chunks)
        assert 0.15 <= loop.time() - start < 0.6
        await response.aclose()
        await upstream.wait_closed(1)
        assert await _get(client, upstream.url + "/") == "conn 2"


async def _collect(response: httpx.Response, into: list[bytes]) -> None:
    async for chunk in response.aiter_raw():
        into.append(chunk)


async def test_deadline_bound_fails_a_trickling_body(upstream: Upstream) -> None:
    """A chunk every 50 ms never trips a per-read bound, but an absolute deadline does."""
    async with _client(read=None) as client:
        response = await client.send(client.build_request("GET", upstream.url + "/trickle"),
                                     stream=True)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert bound_reads(response, deadline=start + 0.4)
        received: list[bytes] = []
        async with asyncio.timeout(2.0):
            with pytest.raises(httpx.ReadTimeout):
                await _collect(response, received)
        assert 0.35 <= loop.time() - start < 0.8
        assert b"".join(received).startswith(b"hello.")
        await response.aclose()
        await upstream.wait_closed(1)


async def test_bound_reads_declines_other_transports(upstream: Upstream) -> None:
    """A response from httpx's own transport: False, so the caller bounds reads itself."""
    async with httpx.AsyncClient() as client:
        response = await client.get(upstream.url + "/")
        assert not bound_reads(response, idle=0.1)


# 6. Cancellation ------------------------------------------------------------------

async def test_cancelling_a_streaming_read_closes_the_connection(upstream: Upstream) -> None:
    """A task waiting on the body is cancelled: the server sees the close within 1 s,
    and the connection does not go back to the pool."""
    async with _client(max_connections=1) as client:
        got_first = asyncio.Event()

        async def read() -> None:
            async with client.stream("GET", upstream.url + "/stall") as response:
                async for _ in response.aiter_raw():
                    got_first.set()

        task = asyncio.create_task(read())
        async with asyncio.timeout(1.0):
            await got_first.wait()
        loop = asyncio.get_running_loop()
        cancelled_at = loop.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await upstream.wait_closed(1) - cancelled_at < 1.0
        assert _idle(client) == 0
        assert await _get(client, upstream.url + "/") == "conn 2"  # slot freed, new conn


async def test_cancelling_a_request_before_its_response_closes_it(upstream: Upstream) -> None:
    """Cancelled while waiting for the headers: the connection is closed, the slot freed."""
    async with _client(max_connections=1) as client:
        task = asyncio.create_task(client.get(upstream.url + "/silent"))
        await asyncio.sleep(0.1)
        assert upstream.accepted == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await upstream.wait_closed(1)
        assert await _get(client, upstream.url + "/") == "conn 2"


# 7. The keep-alive limit ----------------------------------------------------------

async def test_idle_connections_beyond_max_keepalive_are_closed(upstream: Upstream) -> None:
    """Three connections finish with max_keepalive=1: the first is kept, the two others
    are closed (the server sees them go), and the next request reuses the kept one."""
    async with _client(max_keepalive=1) as client:
        responses = [await client.send(client.build_request("GET", upstream.url + "/"),
                                       stream=True) for _ in range(3)]
        assert upstream.accepted == 3
        for response in responses:
            await response.aread()
        await upstream.wait_closed(2)
        await upstream.wait_closed(3)
        assert 1 not in upstream.closed_at
        assert await _get(client, upstream.url + "/") == "conn 1"
        assert upstream.accepted == 3


async def test_an_expired_idle_connection_is_not_reused(upstream: Upstream) -> None:
    """Idle past keepalive_expiry: closed, and the next request opens a new connection."""
    async with _client(keepalive_expiry=0.1) as client:
        assert await _get(client, upstream.url + "/") == "conn 1"
        await asyncio.sleep(0.2)
        assert await _get(client, upstream.url + "/") == "conn 2"
        await upstream.wait_closed(1)


# TLS ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert, key), made by the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=10)
    return cert, key


async def test_tls_connections_are_reused_and_bounded(certificate: tuple[Path, Path]) -> None:
    """Over TLS: two requests share one connection, and the idle bound still holds."""
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    async with Upstream(server_tls) as upstream, _client(
            read=None, tls=ssl.create_default_context(cafile=str(cert))) as client:
        assert await _get(client, upstream.url + "/") == "conn 1"
        assert await _get(client, upstream.url + "/") == "conn 1"
        response = await client.send(client.build_request("GET", upstream.url + "/stall"),
                                     stream=True)
        assert bound_reads(response, idle=0.2)
        chunks = response.aiter_raw()
        assert await anext(chunks) == b"hello"
        async with asyncio.timeout(2.0):
            with pytest.raises(httpx.ReadTimeout):
                await anext(chunks)
        await response.aclose()
        assert upstream.accepted == 1


async def test_an_untrusted_certificate_is_a_readable_connect_error(
        certificate: tuple[Path, Path]) -> None:
    """The handshake fails verification: httpx.ConnectError that says why."""
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    async with Upstream(server_tls) as upstream, _client(max_connections=1) as client:
        for _ in range(2):  # the slot comes back
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get(upstream.url + "/")
