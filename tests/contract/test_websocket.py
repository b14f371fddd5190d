"""``GET /v1/ws`` with the real ``websockets`` client, on every path.

The async path; the hybrid front with every chat route on Flask (``hybrid-0``) or none
(``hybrid-100``), where the socket is served by the native app either way; and the
legacy path under gunicorn gthread and gevent (``legacy_bridge/_websocket.py``). One
server per path for the module (two tenants' keys, a 64 KiB message limit); the
gthread worker's thread bound is tested on a server of its own with ``--threads 2``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket as pysocket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psutil
import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

from async_core.ws_protocol import CLOSE_WAIT, MAX_FRAME
from tests.clients import metric, wait_for
from tests.contract.test_auth import ACME, GLOBEX, KEYS, bearer
from tests.contract.test_resume import body, cut, positions, probe_file, sse_events, text_of
from tests.probe_agents import probe_text, read_probe
from tests.reaper import REAPER
from tests.servers import Server
from tests.ws_raw import RawSocket

AUTH = bearer(ACME)
LIMIT = 65536
Message = dict[str, Any]


PATHS = ["async", "hybrid-100", "hybrid-0", "legacy-gthread", "legacy-gevent"]


@pytest.fixture(scope="module", params=PATHS)
def path_id(request: pytest.FixtureRequest) -> str:
    """Every path: the async app, the hybrid front, gunicorn gthread and gevent."""
    return str(request.param)


@pytest.fixture(scope="module")
def srv(path_id: str) -> Iterator[Server]:
    """A server with two tenants' keys, a 64 KiB message (body) limit and a 1 s send
    timeout (a socket whose send waits that long is closed 1013)."""
    server = Server(path_id, {"STREAMBRIDGE_API_KEYS": KEYS,
                              "STREAMBRIDGE_MAX_BODY_BYTES": str(LIMIT),
                              "STREAMBRIDGE_SEND_TIMEOUT": "1"})
    yield server
    REAPER.retire(server, __name__)  # waited for, and its log read, at the module's end


def ws_url(server: Server) -> str:
    return server.url("/v1/ws").replace("http://", "ws://", 1)


def socket(server: Server, key: str | None = ACME) -> ClientConnection:
    headers = bearer(key) if key else None
    return connect(ws_url(server), additional_headers=headers, open_timeout=10)


def recv_until(ws: ClientConnection, done: Callable[[Message], bool],
               timeout: float = 15) -> list[Message]:
    """The server's messages up to and including the first for which ``done`` is true
    (the socket's own heartbeats left out)."""
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while True:
        raw = ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
        assert isinstance(raw, str), "the server sends text frames"
        message = json.loads(raw)
        if message["event"] == "ping" and message["stream_id"] is None:
            continue  # the socket's heartbeat (tests/contract/test_ws_socket.py)
        out.append(message)
        if done(out[-1]):
            return out


def ended(stream_id: str | None = None) -> Callable[[Message], bool]:
    """True for the terminal event (of ``stream_id``, when given)."""
    return lambda m: (m["event"] in ("done", "error") and m["id"] is not None
                      and (stream_id is None or m["stream_id"] == stream_id))


def start(ws: ClientConnection, request: Message, ref: str = "r",
          seen: list[Message] | None = None) -> str:
    """Send a ``start`` and return the stream id of its ``started`` answer (the other
    streams' messages that came before it are added to ``seen``)."""
    ws.send(json.dumps({"type": "start", "ref": ref, **request}))
    got = recv_until(ws, lambda m: m["event"] in ("started", "error"))
    started = got.pop()
    if seen is not None:
        seen += got
    assert started["event"] == "started" and started["data"]["ref"] == ref, started
    return str(started["stream_id"])


def ws_text(messages: list[Message], stream_id: str) -> str:
    return "".join(m["data"]["text"] for m in messages
                   if m["stream_id"] == stream_id and m["event"] == "delta")


def test_start_streams_the_whole_text_in_order_then_done(srv: Server) -> None:
    with socket(srv) as ws:
        sid = start(ws, body(40, 2))
        got = recv_until(ws, ended(sid))
    assert ws_text(got, sid) == probe_text(40)
    assert got[-1]["event"] == "done" and got[-1]["stream_id"] == sid
    events = [m for m in got if m["event"] in ("delta", "done")]  # deltas may be merged
    ids = positions([m for m in got if m["id"] is not None])
    assert len(ids) == len(events) and ids == sorted(set(ids)), "each event has its id, in order"


def test_two_streams_on_one_socket_are_each_whole(srv: Server) -> None:
    with socket(srv) as ws:
        got: list[Message] = []
        first = start(ws, body(30, 5), "a")
        second = start(ws, body(20, 5), "b", got)
        got += recv_until(ws, ended(first))
        if not any(ended(second)(m) for m in got):
            got += recv_until(ws, ended(second))
    assert first != second
    assert ws_text(got, first) == probe_text(30) and ws_text(got, second) == probe_text(20)


def test_cancel_over_the_socket_stops_the_agent_and_the_socket_goes_on(srv: Server) -> None:
    probe = probe_file()
    with socket(srv) as ws:
        sid = start(ws, body(500, 10, probe))
        recv_until(ws, lambda m: m["event"] == "delta")
        t0 = time.monotonic()
        ws.send(json.dumps({"type": "cancel", "stream_id": sid}))
        got = recv_until(ws, lambda m: m["event"] == "cancel")
        if not any(ended(sid)(m) for m in got):
            got += recv_until(ws, ended(sid))
        record = wait_for(lambda: read_probe(probe), timeout=1.0)[0]
        stopped = time.monotonic() - t0
        terminal = [m for m in got if ended(sid)(m)]
        assert terminal and terminal[-1]["data"]["code"] == "cancelled"
        assert [m for m in got if m["event"] == "cancel"][0]["data"]["outcome"] == "cancelled"
        after = start(ws, body(5, 1), "after")  # the socket still serves
        assert ws_text(recv_until(ws, ended(after)), after) == probe_text(5)
    assert record["produced"] < 500 and stopped < 1.0


def test_a_closed_socket_cancels_its_plain_stream_and_not_a_continue_one(srv: Server) -> None:
    plain, kept = probe_file(), probe_file()
    with socket(srv) as ws:
        start(ws, body(300, 10, plain), "plain")
        sid = start(ws, body(60, 10, kept, on_disconnect="continue"), "kept")
        recv_until(ws, lambda m: m["event"] == "delta" and m["stream_id"] == sid)
    assert wait_for(lambda: read_probe(plain), timeout=2)[0]["produced"] < 300
    assert wait_for(lambda: read_probe(kept), timeout=5)[0]["produced"] == 60


def test_resume_over_ws_a_stream_started_over_sse(srv: Server) -> None:
    sid, seen = cut(srv, body(50, 5, on_disconnect="continue"), 5, AUTH)
    with socket(srv) as ws:
        ws.send(json.dumps({"type": "resume", "stream_id": sid, "cursor": seen[-1]["id"]}))
        got = recv_until(ws, ended(sid))
    assert text_of(seen) + ws_text(got, sid) == probe_text(50)
    assert got[-1]["event"] == "done"


def test_resume_over_sse_a_stream_started_over_ws(srv: Server) -> None:
    with socket(srv) as ws:
        sid = start(ws, body(50, 5, on_disconnect="continue"))
        seen = recv_until(ws, lambda m: m["event"] == "delta" and m["data"]["text"] == "9 ")
    rest = httpx.get(srv.url(f"/v1/streams/{sid}"), timeout=15,
                     headers={**AUTH, "Last-Event-ID": seen[-1]["id"]})
    assert rest.status_code == 200
    after = sse_events(rest.text.splitlines())
    assert ws_text(seen, sid) + text_of(after) == probe_text(50)
    assert after[-1]["event"] == "done"


def test_bad_input_is_named_and_the_socket_and_its_stream_go_on(srv: Server) -> None:
    globex_sid, _ = cut(srv, body(5, 1, on_disconnect="continue"), 1, bearer(GLOBEX))
    with socket(srv) as ws:
        sid = start(ws, body(100, 10))
        bad: list[tuple[str | bytes, str]] = [
            ("{not json", "bad_json"), ("[1, 2]", "bad_message"),
            (json.dumps({"type": "launch"}), "unknown_type"),
            (b"\x00\x01", "binary_frame"), ("x" * (LIMIT + 1), "payload_too_large"),
            (json.dumps({"type": "resume", "stream_id": "nope"}), "stream_not_found"),
            (json.dumps({"type": "resume", "stream_id": globex_sid}), "stream_not_found"),
            (json.dumps({"type": "resume", "stream_id": sid}), "already_following"),
            (json.dumps({"type": "start", "agent": "probe"}), "bad_request"),
            (json.dumps({"type": "cancel"}), "bad_request")]
        codes = []
        for frame, _ in bad:
            ws.send(frame)
            got = recv_until(ws, lambda m: m["event"] == "error" and m["id"] is None)
            codes.append(got[-1]["data"]["code"])
        assert codes == [code for _, code in bad]
        rest = recv_until(ws, ended(sid))
    assert rest[-1]["event"] == "done"


def test_a_cancel_of_another_tenants_stream_is_not_found_and_it_runs_on(srv: Server) -> None:
    """ACME's socket names GLOBEX's running stream in a ``cancel``: ``stream_not_found``,
    as for an unknown id, and GLOBEX's agent runs to its end."""
    probe = probe_file()
    globex_sid, _ = cut(srv, body(30, 20, probe, on_disconnect="continue"), 1, bearer(GLOBEX))
    with socket(srv) as ws:
        ws.send(json.dumps({"type": "cancel", "stream_id": globex_sid}))
        got = recv_until(ws, lambda m: m["event"] in ("error", "cancel"))
    assert got[-1]["event"] == "error" and got[-1]["data"]["code"] == "stream_not_found"
    assert wait_for(lambda: read_probe(probe), timeout=5)[0]["produced"] == 30


def test_the_server_answers_a_protocol_ping(srv: Server) -> None:
    with socket(srv) as ws:
        assert ws.ping().wait(5), "no pong within 5 s"


def test_a_plain_get_is_the_404_of_any_unknown_route(srv: Server) -> None:
    refused = httpx.get(srv.url("/v1/ws"), timeout=10)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"


def test_an_api_key_in_the_header_or_in_a_first_auth_message(srv: Server) -> None:
    with socket(srv, None) as ws:
        ws.send(json.dumps({"type": "start", **body(3, 1)}))
        assert recv_until(ws, lambda m: True)[-1]["data"]["code"] == "unauthorized"
        ws.send(json.dumps({"type": "auth", "key": "wrong"}))
        assert recv_until(ws, lambda m: True)[-1]["data"]["code"] == "unauthorized"
        ws.send(json.dumps({"type": "auth", "key": ACME}))
        assert recv_until(ws, lambda m: True)[-1]["event"] == "auth"
        sid = start(ws, body(3, 1))
        assert ws_text(recv_until(ws, ended(sid)), sid) == probe_text(3)
    with socket(srv, "wrong-key") as ws:
        assert recv_until(ws, lambda m: True)[-1]["data"]["code"] == "unauthorized"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


@contextlib.contextmanager
def raw_client(server: Server, key: str | None = ACME
               ) -> Iterator[tuple[pysocket.socket, ClientProtocol]]:
    """An open socket with a small receive buffer, driven by websockets' sans-IO client."""
    proto = ClientProtocol(parse_uri(ws_url(server)), max_size=None)
    with pysocket.socket() as sock:
        sock.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_RCVBUF, 65536)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.port))
        request = proto.connect()
        if key is not None:
            request.headers["Authorization"] = bearer(key)["Authorization"]
        proto.send_request(request)
        sock.sendall(b"".join(proto.data_to_send()))
        while proto.state is State.CONNECTING:
            proto.receive_data(sock.recv(65536))
        proto.events_received()
        yield sock, proto


def start_flood(sock: pysocket.socket, proto: ClientProtocol, pad: int = 8000) -> None:
    """Start a stream of 4000 unpaced 8 KB deltas: far more than the send queue holds."""
    start = {"type": "start", "message": "hi", "agent": "probe",
             "options": {"tokens": 4000, "interval_ms": 0, "pad": pad}}
    proto.send_text(json.dumps(start).encode())
    sock.sendall(b"".join(proto.data_to_send()))


def test_a_client_that_stops_reading_is_closed_1013(srv: Server) -> None:
    """A raw socket (small receive buffer, websockets' sans-IO client) reads nothing for
    1.5 s while a stream sends 8 KB deltas: the server's send waits more than the 1 s
    send timeout and it closes the socket with 1013; reading again, the client gets the
    data, then that close frame."""
    with raw_client(srv) as (sock, proto):
        start_flood(sock, proto)
        time.sleep(1.5)
        while proto.close_rcvd is None:
            data = sock.recv(1 << 20)
            assert data, "the server dropped the connection without a close frame"
            proto.receive_data(data)
            proto.events_received()
    assert proto.close_rcvd.code == 1013


def _worker(server: Server) -> psutil.Process:
    """The process that serves: gunicorn's one worker, or uvicorn itself."""
    proc = psutil.Process(server.proc.pid)
    children = proc.children(recursive=True)
    return children[0] if children else proc


def _drop(ws: ClientConnection) -> None:
    """Leave without a close frame: the TCP connection just goes."""
    ws.socket.shutdown(pysocket.SHUT_RDWR)
    ws.socket.close()


def test_sockets_that_go_mid_stream_free_their_streams_and_threads(srv: Server,
                                                                   path_id: str) -> None:
    """Four sockets each follow a long stream; two close, two drop the connection: every
    agent's ``finally`` runs, the active streams gauge is back where it was, and the
    threads the sockets held (gthread: simple-websocket's reader each) are gone."""
    worker, active = _worker(srv), lambda: metric(srv.base_url, "streambridge_active_streams")
    before = active()
    probes = [probe_file() for _ in range(4)]
    with contextlib.ExitStack() as stack:
        # max_queue=None: a client holding more than max_queue (16) unread messages stops
        # reading the socket, so its close() never saw the server's close frame and waited
        # its close_timeout (10 s) while the other streams ran to their end (the flake)
        sockets = [stack.enter_context(connect(ws_url(srv), additional_headers=AUTH,
                                               open_timeout=10, max_queue=None))
                   for _ in probes]
        for ws, probe in zip(sockets, probes, strict=True):
            sid = start(ws, body(500, 10, probe))
            recv_until(ws, lambda m, sid=sid: m["event"] == "delta" and m["stream_id"] == sid)
        assert active() == before + 4
        threads = worker.num_threads()  # after that request: its pool thread is counted
        for ws in sockets[:2]:
            ws.close()
        for ws in sockets[2:]:
            _drop(ws)
    records = [wait_for(lambda p=p: read_probe(p), timeout=3)[0] for p in probes]
    assert all(r["produced"] < 500 for r in records)
    if path_id == "legacy-gthread":  # before any request: one could add a pool thread
        wait_for(lambda: worker.num_threads() <= threads - 4, timeout=CLOSE_WAIT + 2)
    wait_for(lambda: active() == before, timeout=3)


def test_per_message_deflate_is_declined(srv: Server) -> None:
    """The client offers permessage-deflate (as browsers do); every path declines it:
    token messages are small, and it cost ~40% more CPU per token (scripts/bench_ws.py)
    and, on the legacy path, ~105 KiB of zlib state per socket."""
    with socket(srv, None) as ws:
        assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
        assert ws.protocol.extensions == []
        assert "Sec-WebSocket-Extensions" not in ws.response.headers


def test_frames_stay_whole_while_the_client_pings_through_a_fast_stream(srv: Server) -> None:
    """A client pings all through an unpaced stream of 8 KB deltas and reads in small
    bites (a 4 KiB receive buffer, so the server's writes often wait half-done): the
    pongs (on the legacy path written by simple-websocket's reader while the loop and
    the view write the deltas) never land inside a text frame, so every frame parses
    and the text is whole; and every ping is answered."""
    raw = RawSocket(srv.port, AUTH, rcvbuf=4096)
    tokens, pad, pings = 1000, 8000, 0
    try:
        raw.send({"type": "start", **body(tokens, 0), "options": {
            "tokens": tokens, "interval_ms": 0, "pad": pad}})
        deadline, seen, done = time.monotonic() + 30, 0, False
        while time.monotonic() < deadline and raw.proto.close_rcvd is None and not done:
            raw.proto.send_ping(str(pings).encode())
            raw.flush()
            pings += 1
            raw.read_for(0.003)
            done = any(f.opcode is Opcode.TEXT and b'"event":"done"' in f.data
                       for f in raw.frames[seen:])
            seen = len(raw.frames)
        raw.read_for(0.5)  # the last pongs
    finally:
        raw.close()
    messages = [m for m in raw.messages() if m["event"] != "ping"]
    sid = messages[0]["stream_id"]
    assert ws_text(messages, sid) == probe_text(tokens, pad)
    assert messages[-1]["event"] == "done"
    pongs = [f.data for f in raw.frames if f.opcode is Opcode.PONG]
    assert pongs == [str(i).encode() for i in range(pings)]


def test_a_frame_over_16_mib_is_closed_1009_and_the_server_goes_on(srv: Server,
                                                                    path_id: str) -> None:
    """Past ``MAX_FRAME`` the WebSocket layer closes 1009. uvicorn does so from the frame's
    header, while the client still sends: its close frame may be lost to the reset of the
    unread rest. simple-websocket (legacy) reads up to the limit, then closes."""
    code: int | None = None
    try:
        with connect(ws_url(srv), additional_headers=AUTH, open_timeout=10,
                     compression=None, max_size=None) as ws:
            ws.send("x" * (MAX_FRAME + 1))
            while True:  # socket heartbeats may come before the close
                got = json.loads(ws.recv(timeout=15))
                assert got["event"] == "ping", f"the server took a frame over 16 MiB: {got}"
    except ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd is not None else None
    except ConnectionResetError:
        pass
    assert code == 1009 or (code is None and not path_id.startswith("legacy"))
    with socket(srv) as ws:
        sid = start(ws, body(3, 1))
        assert ws_text(recv_until(ws, ended(sid)), sid) == probe_text(3)


@pytest.mark.parametrize(("legacy", "bound"), [
    ("legacy-gthread", {"STREAMBRIDGE_THREADS": "2"}),
    ("legacy-gevent", {"STREAMBRIDGE_WORKER_CONNECTIONS": "2"})], ids=["gthread", "gevent"])
def test_a_legacy_socket_holds_a_thread_or_greenlet_until_it_goes(
        legacy: str, bound: dict[str, str]) -> None:
    """A worker of 2 threads (gthread) or 2 connections (gevent): sockets that went
    mid-stream gave theirs back, and so did one whose client stopped reading (two open
    at once work after those), and a third open socket waits for one to close."""
    server = Server(legacy, {**bound, "STREAMBRIDGE_SEND_TIMEOUT": "1"})
    try:
        for _ in range(4):
            with socket(server, None) as ws:
                start(ws, body(500, 10))
                recv_until(ws, lambda m: m["event"] == "delta")
                _drop(ws)
        # A client that stops reading and keeps its connection: closed 1013 once a send
        # waited the 1 s send timeout, its write is stuck, and CLOSE_WAIT later the server
        # shuts the connection down: the second socket below gets that thread or greenlet.
        with raw_client(server, None) as (sock, proto):
            start_flood(sock, proto)
            with socket(server, None) as first, connect(ws_url(server),
                                                        open_timeout=CLOSE_WAIT + 20) as second:
                for ws in (first, second):
                    sid = start(ws, body(3, 1))
                    assert ws_text(recv_until(ws, ended(sid)), sid) == probe_text(3)
                with pytest.raises(TimeoutError), connect(ws_url(server), open_timeout=1):
                    pass
                second.close()
                with socket(server, None) as ws:
                    sid = start(ws, body(3, 1))
                    assert ws_text(recv_until(ws, ended(sid)), sid) == probe_text(3)
    finally:
        server.stop()
    assert not server.problems(), "\n".join(server.problems())


@pytest.mark.parametrize("legacy", ["legacy-gthread", "legacy-gevent"])
def test_sigterm_ends_the_stream_then_closes_the_socket_1001(legacy: str) -> None:
    """A stream on an open socket gets its terminal event within the drain grace, and
    the socket is closed 1001 (going away) right after, not when gunicorn's graceful
    timeout (7 s here) ends the worker that the socket's thread or greenlet held."""
    server = Server(legacy)
    try:
        with socket(server, None) as ws:
            sid = start(ws, body(5000, 10))
            recv_until(ws, lambda m: m["event"] == "delta")
            server.signal(signal.SIGTERM)
            terminal = recv_until(ws, ended(sid))[-1]
            t0 = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                recv_until(ws, lambda m: False)
            waited = time.monotonic() - t0
        assert terminal["event"] == "error" and terminal["data"]["code"] == "shutdown"
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert waited < 2.0, f"the socket was closed {waited:.1f} s after the drain"
        assert server.wait(timeout=15) == 0
    finally:
        server.stop()
    assert not server.problems(), "\n".join(server.problems())
