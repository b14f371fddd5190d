"""``GET /v1/ws`` with the real ``websockets`` client, on the paths that serve it natively.

The async path, and the hybrid front with every chat route on Flask (``hybrid-0``) or
none (``hybrid-100``): the socket is served by the native app either way. One server per
path for the module (two tenants' keys, a 64 KiB message limit); the legacy path's
answer (it has no WebSocket yet) is tested on its own server.
"""

from __future__ import annotations

import json
import socket as pysocket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

from tests.clients import wait_for
from tests.contract.test_auth import ACME, GLOBEX, KEYS, bearer
from tests.contract.test_resume import body, cut, positions, probe_file, sse_events, text_of
from tests.probe_agents import probe_text, read_probe
from tests.servers import Server

AUTH = bearer(ACME)
LIMIT = 65536
Message = dict[str, Any]


@pytest.fixture(scope="module", params=["async", "hybrid-100", "hybrid-0"])
def path_id(request: pytest.FixtureRequest) -> str:
    """The paths whose WebSocket is served natively."""
    return str(request.param)


@pytest.fixture(scope="module")
def srv(path_id: str) -> Iterator[Server]:
    """A server with two tenants' keys, a 64 KiB message (body) limit and a 1 s send
    timeout (a socket whose send waits that long is closed 1013)."""
    server = Server(path_id, {"STREAMBRIDGE_API_KEYS": KEYS,
                              "STREAMBRIDGE_MAX_BODY_BYTES": str(LIMIT),
                              "STREAMBRIDGE_SEND_TIMEOUT": "1"})
    yield server
    server.stop()
    assert not server.problems(), "\n".join(server.problems())


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
    ids = positions([m for m in got if m["id"] is not None])
    assert len(ids) == 41 and ids == sorted(set(ids)), "every event has its log id, in order"


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


def test_a_client_that_stops_reading_is_closed_1013(srv: Server) -> None:
    """A raw socket (small receive buffer, websockets' sans-IO client) reads nothing for
    1.5 s while a stream sends 8 KB deltas: the server's send waits more than the 1 s
    send timeout and it closes the socket with 1013; reading again, the client gets the
    data, then that close frame."""
    proto = ClientProtocol(parse_uri(ws_url(srv)), max_size=None)
    with pysocket.socket() as sock:
        sock.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_RCVBUF, 65536)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", srv.port))
        request = proto.connect()
        request.headers["Authorization"] = AUTH["Authorization"]
        proto.send_request(request)
        sock.sendall(b"".join(proto.data_to_send()))
        while proto.state is State.CONNECTING:
            proto.receive_data(sock.recv(65536))
        proto.events_received()
        start = {"type": "start", "message": "hi", "agent": "probe",
                 "options": {"tokens": 4000, "interval_ms": 0, "pad": 8000}}
        proto.send_text(json.dumps(start).encode())
        sock.sendall(b"".join(proto.data_to_send()))
        time.sleep(1.5)
        while proto.close_rcvd is None:
            data = sock.recv(1 << 20)
            assert data, "the server dropped the connection without a close frame"
            proto.receive_data(data)
            proto.events_received()
    assert proto.close_rcvd.code == 1013


@pytest.mark.parametrize("legacy", ["legacy-gthread"])
def test_the_legacy_path_answers_a_clear_404(legacy: str) -> None:
    server = Server(legacy)
    try:
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(server), open_timeout=10)
        response = refused.value.response
        assert response.status_code == 404
        assert json.loads(response.body)["error"]["code"] == "not_found"
    finally:
        server.stop()
