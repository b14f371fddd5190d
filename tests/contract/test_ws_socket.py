"""``GET /v1/ws`` as a socket: heartbeats, close codes, frame-level bad input, stalled readers.

The paths that serve the WebSocket natively (async, the hybrid front); one server per
path for the module, with the test servers' heartbeat of 0.25 s (``tests/servers.py``).
``tests/ws_raw.py`` is the client that shows protocol pings and can stop reading; the
rest use the ``websockets`` sync client.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from tests.contract.test_resume import body
from tests.contract.test_websocket import ended, recv_until, socket, start, ws_text
from tests.probe_agents import probe_text
from tests.reaper import REAPER
from tests.servers import Server
from tests.ws_raw import RawSocket

HEARTBEAT = 0.25  # tests/servers.py BASE_ENV
STALLED = 8
SEND_TIMEOUT = 1.0  # a send blocked this long closes the socket 1013
# Server-tree RSS growth per stalled socket at its peak, 200-byte tokens: the blocked
# send holds its stream back (the agent pauses), so what is held is the transport's
# buffer, the engine's and the stream log's few batches: measured 0.9-1.3 MiB on every
# path (4.3 MiB when every message went through the queue); README states it.
MIB_PER_STALLED_SOCKET = 3.0


@pytest.fixture(scope="module", params=["async", "hybrid-100"])
def path_id(request: pytest.FixtureRequest) -> str:
    """The paths whose WebSocket is served natively (the hybrid front serves it the same
    way whatever its flags: hybrid-0 is left to test_websocket.py, for the CI budget)."""
    return str(request.param)


@pytest.fixture(scope="module")
def srv(path_id: str) -> Iterator[Server]:
    """The path's server, with no keys and no store (RSS is the socket's alone)."""
    server = Server(path_id, {"STREAMBRIDGE_DATABASE_URL": "none",
                              "STREAMBRIDGE_SEND_TIMEOUT": str(SEND_TIMEOUT)})
    yield server
    REAPER.retire(server, __name__)  # waited for, and its log read, at the module's end


def _rss(server: Server) -> int:
    proc = psutil.Process(server.proc.pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def close_code(ws: ClientConnection, timeout: float = 10) -> int | None:
    """Read until the server closes; its close code (None: no close frame came)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
    except ConnectionClosed as closed:
        return None if closed.rcvd is None else closed.rcvd.code
    raise AssertionError(f"the socket was still open after {timeout} s")


def test_an_idle_socket_gets_protocol_pings_and_ping_messages(srv: Server) -> None:
    """Nothing to send for a heartbeat: a ``ping`` message (stream and id null) a browser
    sees, and a protocol ping at the same interval; a busy socket gets no ``ping``."""
    raw = RawSocket(srv.port)
    try:
        raw.read_for(6 * HEARTBEAT)
        idle = [m for m in raw.messages() if m["event"] == "ping"]
        assert len(idle) >= 3 and all(m["stream_id"] is None and m["id"] is None
                                      and m["data"] is None for m in idle), raw.messages()
        assert raw.pings() >= 3, f"{raw.pings()} protocol pings in {6 * HEARTBEAT} s"
        seen = len(raw.messages())
        raw.send({"type": "start", **body(60, 20)})  # a delta every 20 ms for 1.2 s
        raw.read_for(1.0)
        busy = raw.messages()[seen:]
        assert any(m["event"] == "delta" for m in busy)
        # none while deltas flow every 20 ms (one allowed: a loaded machine may stall 0.25 s)
        assert len([m for m in busy if m["event"] == "ping" and m["stream_id"] is None]) <= 1
    finally:
        raw.close()


def test_the_first_delta_follows_started_without_waiting_for_an_ack(srv: Server) -> None:
    """``started`` and the first delta are two small writes in a row: with Nagle on (the
    async path's connections had it: uvicorn binds with proto 0, so asyncio did not set
    TCP_NODELAY) the second waited ~40 ms for the client's delayed ACK. The best of
    five streams must see it within 15 ms."""
    gaps = []
    with socket(srv, None) as ws:
        for _ in range(5):
            ws.send(json.dumps({"type": "start", **body(3, 50)}))
            recv_until(ws, lambda m: m["event"] == "started")
            t0 = time.monotonic()
            sid = recv_until(ws, lambda m: m["event"] == "delta")[-1]["stream_id"]
            gaps.append(time.monotonic() - t0)
            recv_until(ws, ended(sid))
    assert min(gaps) < 0.015, [f"{g * 1000:.1f} ms" for g in gaps]


def test_a_frame_over_the_size_limit_is_closed_1009(srv: Server) -> None:
    """A frame over uvicorn's ``ws_max_size`` (16 MiB) is a frame-level violation: 1009,
    sent as soon as the frame's header says how long it is."""
    raw = RawSocket(srv.port)
    try:
        raw.proto.send_text(b"x" * (16 * 2**20 + 1))
        frame = b"".join(raw.proto.data_to_send())
        raw.sock.sendall(frame[:65536])  # the header and a little: the rest never goes
        assert raw.read_to_close(10) == 1009
    finally:
        raw.close()


def test_bad_messages_between_a_streams_deltas_leave_it_whole(srv: Server) -> None:
    """Bad input sent while a stream runs (a ``start`` with a bad field, a non-string
    type, an empty object, a cancel of a foreign stream): each is an ``error`` naming it,
    and the running stream's text is whole and in order."""
    with socket(srv, None) as ws:
        got: list[dict[str, object]] = []
        sid = start(ws, body(80, 5))
        bad = [({"type": "start", "agent": "probe", "message": "hi", "on_disconnect": "x"},
                "bad_request"), ({"type": 7}, "unknown_type"), ({}, "unknown_type"),
               ({"type": "cancel", "stream_id": "not-a-stream"}, "stream_not_found"),
               ({"type": "resume", "stream_id": sid, "cursor": 5}, "bad_cursor")]
        codes = []
        for message, _ in bad:
            ws.send(json.dumps(message))
            got += recv_until(ws, lambda m: m["event"] == "error" and m["id"] is None)
            codes.append(got[-1]["data"]["code"])  # type: ignore[index]
        assert codes == [code for _, code in bad]
        if not any(ended(sid)(m) for m in got):  # type: ignore[arg-type]
            got += recv_until(ws, ended(sid))
    assert ws_text(got, sid) == probe_text(80)  # type: ignore[arg-type]


def test_stalled_readers_are_closed_1013_memory_bounded_others_not_slowed(
        srv: Server) -> None:
    """Stalled sockets whose streams push 200-byte tokens unpaced: each is closed 1013 once
    a send has waited the send timeout, the server's RSS peak is bounded per socket, and
    a reading socket's paced stream meanwhile keeps its pace."""
    before = _rss(srv)
    stalled = [RawSocket(srv.port, rcvbuf=4096) for _ in range(STALLED)]
    try:
        with socket(srv, None) as ws:
            sid = start(ws, body(100, 10))  # 1 s paced: the stream others must not slow
            t0 = time.monotonic()
            for raw in stalled:
                raw.send({"type": "start", "message": "hi", "agent": "probe",
                          "options": {"tokens": 10**7, "interval_ms": 0, "pad": 200}})
            peak = before
            while time.monotonic() - t0 < 1.5:
                peak = max(peak, _rss(srv))
                time.sleep(0.05)
            got = recv_until(ws, ended(sid))
            took = time.monotonic() - t0
        codes = [raw.read_to_close() for raw in stalled]
    finally:
        for raw in stalled:
            raw.close()
    assert ws_text(got, sid) == probe_text(100) and got[-1]["event"] == "done"
    assert took < 3.0, f"a paced 1 s stream took {took:.2f} s beside {STALLED} stalled sockets"
    assert codes == [1013] * STALLED, codes
    per_socket = (peak - before) / STALLED / 2**20
    after = _rss(srv) - before
    print(f"peak RSS +{(peak - before) / 2**20:.1f} MiB, {per_socket:.2f} MiB per stalled "
          f"socket; after +{after / 2**20:.1f} MiB; paced stream {took:.2f} s")
    assert per_socket < MIB_PER_STALLED_SOCKET, f"{per_socket:.2f} MiB per stalled socket"
    assert after < STALLED * MIB_PER_STALLED_SOCKET * 2**20, "memory still growing"


@pytest.mark.parametrize("stopped", ["async", "hybrid-0"])
def test_a_stopping_server_ends_streams_in_band_then_closes_1012(stopped: str) -> None:
    """SIGTERM: a running stream ends with the in-band ``shutdown`` error (retryable:
    resume elsewhere), then the socket closes 1012 (service restart)."""
    server = Server(stopped, {"STREAMBRIDGE_DRAIN_GRACE": "0.3"})
    try:
        with socket(server, None) as ws:
            sid = start(ws, body(100_000, 10))
            recv_until(ws, lambda m: m["event"] == "delta")
            server.signal(signal.SIGTERM)
            got = recv_until(ws, ended(sid))
            code = close_code(ws)
    finally:
        server.stop()
    assert got[-1]["event"] == "error" and got[-1]["data"]["code"] == "shutdown", got[-1]
    assert got[-1]["data"]["retryable"] is True
    assert code == 1012
