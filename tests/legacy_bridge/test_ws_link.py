"""The legacy WebSocket's writing side (``SocketLink``, ``SocketWriter``) on real sockets.

A Unix socket pair stands for the client's connection; the peer's bytes are parsed by
wsproto's own frame parser, so a frame cut by another would not parse. The loop side
runs on a real asyncio loop, the view and simple-websocket's reader are real threads.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode

from async_core.ws_protocol import text_frame
from legacy_bridge._glue import ThreadGlue
from legacy_bridge._ws_link import SocketLink
from legacy_bridge._ws_writer import WINDOW

GLUE = ThreadGlue(8)


def parse(data: bytes) -> list[tuple[Opcode, str | bytes]]:
    """Every message (text) and control frame in ``data``, as wsproto's client reads them."""
    proto, out, parts = FrameProtocol(client=True, extensions=[]), [], []
    proto.receive_bytes(data)
    for frame in proto.received_frames():
        if frame.opcode in (Opcode.TEXT, Opcode.CONTINUATION):
            parts.append(frame.payload)
            if frame.message_finished:
                out.append((Opcode.TEXT, "".join(parts)))
                parts = []
        else:
            out.append((frame.opcode, frame.payload))
    assert not parts, "a text message was cut short"
    return out


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the server's end, the client's end) of a stream connection with small buffers."""
    server, client = socket.socketpair()
    for end in (server, client):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    yield server, client
    server.close()
    client.close()


def read_all(sock: socket.socket, until: float) -> bytes:
    """What ``sock`` receives until its peer shuts down, or for ``until`` seconds."""
    sock.settimeout(0.5)
    chunks, deadline = [], time.monotonic() + until
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def view(link: SocketLink, stop: threading.Event) -> None:
    """The view's writing part: wait for what the loop left, write it (blocking)."""
    while not stop.is_set():
        close, over = link.take()
        link.writer.flush()
        if over:
            return


def run_and_read(client: socket.socket, run: Callable[[], Coroutine[Any, Any, None]],
                 stop: threading.Event, *, timeout: float, read_after: float = 0.0) -> bytes:
    """Run ``run()`` on a new loop while a thread reads ``client`` to its end (after
    ``read_after`` seconds: a client slow to start reading); return what it read."""
    reader: list[bytes] = []

    def read() -> None:
        time.sleep(read_after)
        reader.append(read_all(client, timeout / 2))

    got = threading.Thread(target=read)
    got.start()
    try:
        asyncio.run(asyncio.wait_for(run(), timeout))
    finally:
        stop.set()
        got.join(timeout)
    return reader[0]


def test_the_frames_of_one_loop_pass_are_two_writes() -> None:
    """50 messages sent in one pass of the loop leave in two writes, the first at once and
    the other 49 together at the pass's end: a sequenced-packet socket keeps each write
    a record of its own."""
    server, client = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    texts = [f'{{"n":{i}}}' for i in range(50)]

    async def burst() -> None:
        link = SocketLink(GLUE, server)
        for text in texts:
            await link.send(text)  # no wait: the window is far
        await asyncio.sleep(0)  # the pass ends: its flush runs
        await asyncio.sleep(0)
        link.stop(release=True)

    try:
        asyncio.run(burst())
        records = []
        client.setblocking(False)
        while True:
            try:
                records.append(client.recv(1 << 20))
            except BlockingIOError:
                break
    finally:
        server.close()
        client.close()
    assert [len(parse(r)) for r in records] == [1, 49], "writes for one burst"
    assert parse(b"".join(records)) == [(Opcode.TEXT, t) for t in texts]


def test_what_the_kernel_does_not_take_the_view_writes_whole_and_in_order(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """A client that reads late: the loop writes what the socket takes without blocking
    (its sends return at once, or wait for room past the window), the view writes the
    rest; the client gets every message whole, in order."""
    server, client = pair
    texts = [f"{i:05d}" + "x" * 1000 for i in range(300)]
    stop, slowest = threading.Event(), [0.0]

    async def produce(link: SocketLink) -> None:
        for text in texts:
            t0 = time.perf_counter()
            link.flush()  # a write of its own each: partial writes and EAGAIN happen
            slowest[0] = max(slowest[0], time.perf_counter() - t0)
            await link.send(text)
        link.end()

    async def run() -> None:
        link = SocketLink(GLUE, server)
        writer = threading.Thread(target=view, args=(link, stop))
        writer.start()
        await produce(link)
        await asyncio.to_thread(writer.join, 10)
        link.stop(release=True)
        server.shutdown(socket.SHUT_WR)

    data = run_and_read(client, run, stop, timeout=20, read_after=0.3)
    assert parse(data) == [(Opcode.TEXT, t) for t in texts]
    assert slowest[0] < 0.05, f"the loop blocked {slowest[0] * 1000:.0f} ms in a write"


def test_a_threads_frames_never_land_inside_the_loops(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """The loop writes 2 KB messages while a thread (simple-websocket's reader answering
    pings) writes 300 pong frames: through a small buffer that makes partial writes
    common, every frame arrives whole, the messages in order, every pong once."""
    server, client = pair
    texts = [f"{i:05d}" + "y" * 2000 for i in range(400)]
    pong = bytes((0x8A, 4)) + b"pong"
    stop = threading.Event()

    async def run() -> None:
        link = SocketLink(GLUE, server)
        writer = threading.Thread(target=view, args=(link, stop))
        ponger = threading.Thread(target=lambda: [link.writer.write(pong) for _ in range(300)])
        writer.start()
        ponger.start()
        for i, text in enumerate(texts):
            if i % 3 == 0:
                await asyncio.sleep(0)  # let passes end now and then: several writes
            await link.send(text)
        await asyncio.to_thread(ponger.join, 10)
        link.end()
        await asyncio.to_thread(writer.join, 10)
        link.stop(release=True)
        server.shutdown(socket.SHUT_WR)

    frames = parse(run_and_read(client, run, stop, timeout=30))
    assert [p for op, p in frames if op is Opcode.TEXT] == texts
    assert [p for op, p in frames if op is Opcode.PONG] == [b"pong"] * 300


def test_a_client_that_left_fails_the_next_send_not_the_loop() -> None:
    """Once the connection is gone, the loop's write fails quietly and the next send
    raises ``ConnectionResetError`` (the session's "client left")."""
    server, client = socket.socketpair()
    client.close()

    async def run() -> None:
        link = SocketLink(GLUE, server)
        await link.send("one")
        await asyncio.sleep(0)  # the write fails: EPIPE
        with pytest.raises(ConnectionResetError):
            await link.send("two")
        link.stop(release=True)

    try:
        asyncio.run(run())
    finally:
        server.close()


def test_the_frame_bytes_are_what_wsproto_reads() -> None:
    """``text_frame`` at each length encoding (7, 16 and 64 bits) reads back whole."""
    for size in (0, 125, 126, 65535, 65536, WINDOW * 5):
        text = "é" * (size // 2) + "a" * (size % 2)
        assert parse(text_frame(text.encode())) == [(Opcode.TEXT, text)]
