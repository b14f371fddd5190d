"""The WebSocket across server processes on one Redis (issue 15 item 4).

A is ``legacy-gevent`` (SSE only), B a path that serves ``/v1/ws`` natively (async, and
the hybrid front with every chat route on Flask); both real ``streambridge serve``
processes on the module's private redis-server with short leases. A stream started over
SSE on A is resumed over the socket on B, and cancelled from B's socket.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.processes import FAST_LEASES
from tests.cluster.test_two_servers import chat
from tests.contract.test_resume import positions
from tests.contract.test_websocket import ended, recv_until, socket, ws_text
from tests.probe_agents import probe_text, read_probe
from tests.servers import Server
from tests.streamlog.conftest import RedisServer


@pytest.fixture(scope="module")
def a(cluster_redis: RedisServer) -> Iterator[Server]:
    """A: the legacy path under gevent, on the module's Redis."""
    server = Server("legacy-gevent", {"STREAMBRIDGE_REDIS_URL": cluster_redis.url,
                                      **FAST_LEASES})
    yield server
    server.stop()
    assert not server.problems(), server.problems()


@pytest.fixture(scope="module", params=["async", "hybrid-0"])
def b(request: pytest.FixtureRequest, cluster_redis: RedisServer) -> Iterator[Server]:
    """B: a path whose WebSocket is native, on the same Redis."""
    server = Server(str(request.param), {"STREAMBRIDGE_REDIS_URL": cluster_redis.url,
                                         **FAST_LEASES})
    yield server
    server.stop()
    assert not server.problems(), server.problems()


def test_sse_on_a_resumed_over_the_socket_on_b_is_whole_in_order_once(
        a: Server, b: Server) -> None:
    """Cut A's SSE after a random number of deltas; B's socket, resumed from the last id
    read, gives the rest: the text is whole, the ids rise, nothing is repeated."""
    rng = random.Random()
    with socket(b, None) as ws:
        for _ in range(3):
            cut = rng.randint(1, 150)
            first = chat(a, cut_after=cut, tokens=200, interval_ms=3)
            assert first.status == 200, first
            sid = first.headers["x-stream-id"]
            ws.send(json.dumps({"type": "resume", "stream_id": sid, "cursor": first.last.id}))
            rest = [m for m in recv_until(ws, ended(sid)) if m["stream_id"] == sid]
            assert rest[-1]["event"] == "done", (cut, rest[-3:])
            assert first.text + ws_text(rest, sid) == probe_text(200), cut
            at = positions([{"id": first.last.id}, *(m for m in rest if m["id"] is not None)])
            assert at == sorted(set(at)), f"ids repeated or out of order after a cut at {cut}"


def test_cancel_over_bs_socket_stops_the_agent_on_a(a: Server, b: Server,
                                                   tmp_path: Path) -> None:
    """A ``cancel`` sent on B's socket for a stream running on A: B's socket answers and
    gets the ``cancelled`` end, and the agent on A ran its ``finally`` within 1 s."""
    probe = tmp_path / "probe.jsonl"
    first = chat(a, cut_after=1, tokens=100_000, interval_ms=5, probe_file=str(probe))
    sid = first.headers["x-stream-id"]
    with socket(b, None) as ws:
        ws.send(json.dumps({"type": "resume", "stream_id": sid, "cursor": first.last.id}))
        recv_until(ws, lambda m: m["event"] == "delta" and m["stream_id"] == sid)
        t0 = time.time()
        ws.send(json.dumps({"type": "cancel", "stream_id": sid}))
        got = recv_until(ws, lambda m: m["event"] == "cancel")
        if not any(ended(sid)(m) for m in got):
            got += recv_until(ws, ended(sid))
    answer = next(m for m in got if m["event"] == "cancel")
    assert answer["stream_id"] == sid and answer["data"]["cancel_requested"] is True, answer
    terminal = next(m for m in got if ended(sid)(m))
    assert terminal["event"] == "error" and terminal["data"]["code"] == "cancelled"
    deadline = time.monotonic() + 5
    while not read_probe(str(probe)) and time.monotonic() < deadline:
        time.sleep(0.02)
    (record,) = read_probe(str(probe))
    assert record["t"] - t0 < 1.0 and record["produced"] < 100_000, record

