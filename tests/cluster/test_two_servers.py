"""Two server processes of different paths on one Redis (issue 13 item 7), plus Celery.

A is ``legacy-gevent`` with 2 workers, B is ``async``; both real ``streambridge serve``
processes with ``STREAMBRIDGE_REDIS_URL`` on a private redis-server and short leases
(``FAST_LEASES``: a killed owner is swept within about 1.2 s) and ONE shared SQLite
store (checkpoints every 50 ms): a killed host's transcripts are marked by the sweeper's
server. The probe agent streams ``0 1 2 ...`` so a text tells whether anything was lost
or repeated.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.cluster.processes import FAST_LEASES, CeleryWorker
from tests.cluster.sse import Read, sse
from tests.probe_agents import probe_text, read_probe
from tests.servers import Server
from tests.streamlog.conftest import RedisServer

SWEEP_BOUND = 1.0 + 0.2 + 2.0  # lease TTL + sweep interval + slack on a loaded machine


def _env(srv: RedisServer) -> dict[str, str]:
    return {"STREAMBRIDGE_REDIS_URL": srv.url, **FAST_LEASES,
            "STREAMBRIDGE_DATABASE_PATH": str(srv.dir / "shared.sqlite3"),
            "STREAMBRIDGE_CHECKPOINT_INTERVAL": "0.05", "STREAMBRIDGE_CHECKPOINT_TOKENS": "4"}


def _turns(srv: RedisServer, stream_id: str) -> list[tuple[str, str, str, str | None]]:
    """(role, outcome, content, reason) of a stream's stored rows, from the shared file."""
    conn = sqlite3.connect(srv.dir / "shared.sqlite3", timeout=10)
    try:
        return list(conn.execute("SELECT role, outcome, content, reason FROM turns "
                                 "WHERE stream_id = ? ORDER BY position", (stream_id,)))
    finally:
        conn.close()


def _until(what: str, check: Callable[[], bool], timeout: float) -> float:
    """Poll ``check`` until true; return how long it took (fail past ``timeout``)."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, f"{what} not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def servers(cluster_redis: RedisServer) -> Iterator[tuple[Server, Server]]:
    """A (legacy-gevent, 2 workers) and B (async) on the module's Redis."""
    a = Server("legacy-gevent", _env(cluster_redis), ["--workers", "2"])
    try:
        b = Server("async", _env(cluster_redis))
    except BaseException:
        a.stop()
        raise
    yield a, b
    for srv in (a, b):
        srv.stop()
        assert not srv.problems(), srv.problems()


def chat(srv: Server, *, cut_after: int | None = None, **options: Any) -> Read:
    """Start a probe stream on ``srv`` that goes on when its client leaves."""
    return sse("POST", srv.url("/v1/chat"), cut_after=cut_after, body={
        "message": "hi", "agent": "probe", "options": options, "on_disconnect": "continue"})


def resume(srv: Server, stream_id: str, last_id: str | None = None, **kw: Any) -> Read:
    """Read ``stream_id`` on ``srv`` after ``last_id`` (``Last-Event-ID``)."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    return sse("GET", srv.url(f"/v1/streams/{stream_id}"), headers=headers, **kw)


def cancel(srv: Server, stream_id: str) -> httpx.Response:
    """``POST /v1/streams/{id}/cancel`` on ``srv``."""
    return httpx.post(srv.url(f"/v1/streams/{stream_id}/cancel"), timeout=10)


def test_start_on_a_resume_on_b_after_a_cut_at_a_random_point(
        servers: tuple[Server, Server]) -> None:
    """Cut on A after a random number of deltas; B replays the rest: whole, in order, once."""
    a, b = servers
    rng = random.Random()
    for _ in range(3):
        cut = rng.randint(1, 150)
        first = chat(a, cut_after=cut, tokens=200, interval_ms=3)
        assert first.status == 200, first
        sid = first.headers["x-stream-id"]
        rest = resume(b, sid, first.last.id)
        assert rest.status == 200 and rest.last.event == "done", (cut, rest.events[-3:])
        assert first.text + rest.text == probe_text(200), cut
        assert rest.data()["tokens"] == 200


def test_cancel_from_b_stops_the_agent_on_a(servers: tuple[Server, Server],
                                            tmp_path: Path) -> None:
    """A cancel sent to B ends A's stream `cancelled`; the agent on A stopped (finally ran)."""
    a, b = servers
    probe = tmp_path / "probe.jsonl"
    first = chat(a, cut_after=1, tokens=100_000, interval_ms=5, probe_file=str(probe))
    sid = first.headers["x-stream-id"]
    follower: dict[str, Read] = {}
    t = threading.Thread(target=lambda: follower.setdefault("r", resume(b, sid, first.last.id)))
    t.start()
    time.sleep(0.2)  # the follower is attached (it would get the end either way)
    t0 = time.time()
    r = cancel(b, sid)
    assert r.status_code == 200, r.text
    t.join(10)
    read = follower["r"]
    assert read.last.event == "error" and read.data()["code"] == "cancelled"
    deadline = time.monotonic() + 5
    while not read_probe(str(probe)) and time.monotonic() < deadline:
        time.sleep(0.02)
    (record,) = read_probe(str(probe))
    assert record["t"] - t0 < 1.0 and record["produced"] < 100_000
    again = cancel(b, sid)  # idempotent: the outcome of a finished stream
    assert again.status_code == 200, again.text


def test_celery_stream_is_read_and_cancelled_through_both_paths(
        servers: tuple[Server, Server], make_worker: Callable[[], CeleryWorker]) -> None:
    """A Celery task's stream reads whole on A and on B; a cancel via either stops it."""
    a, b = servers
    worker = make_worker()
    sid = worker.enqueue("default", tokens=300, interval_ms=2)
    reads = _wait_readable(b, sid)
    for srv in (a, b):
        whole = reads if srv is b else resume(srv, sid)
        assert whole.last.event == "done" and whole.text == probe_text(300), srv.path_id
    for via, reader in ((a, b), (b, a)):  # cancelled on each path, read on the other
        sid = worker.enqueue("default", tokens=100_000, interval_ms=5)
        first = _wait_readable(reader, sid, cut_after=1)
        assert cancel(via, sid).status_code == 200, via.path_id
        rest = resume(reader, sid, first.last.id)
        assert rest.last.event == "error" and rest.data()["code"] == "cancelled", via.path_id


def _wait_readable(srv: Server, sid: str, **kw: Any) -> Read:
    """Resume ``sid`` once the worker created it (404 until it picks the task up)."""
    deadline = time.monotonic() + 20
    while True:
        read = resume(srv, sid, **kw)
        if read.status != 404 or time.monotonic() > deadline:
            assert read.status == 200, read
            return read
        time.sleep(0.05)


def test_sigkill_of_a_while_its_streams_run_b_sweeps_them(
        cluster_redis: RedisServer, servers: tuple[Server, Server]) -> None:
    """SIGKILL a 2-worker A mid-stream: a live server's sweeper (B's, or the module's
    legacy server's) ends every stream `interrupted`, and marks their transcripts
    `interrupted` from the killed server's last checkpoint in the shared store (it never
    comes back: its own store's recovery at start-up would be too late, or never)."""
    _, b = servers
    doomed = Server("legacy-gevent", _env(cluster_redis), ["--workers", "2"])
    try:
        firsts = [chat(doomed, cut_after=1, tokens=100_000, interval_ms=5) for _ in range(4)]
        sids = [f.headers["x-stream-id"] for f in firsts]
        out: dict[str, Read] = {}
        threads = [threading.Thread(target=lambda s=sid, f=f: out.setdefault(
            s, resume(b, s, f.last.id))) for sid, f in zip(sids, firsts, strict=True)]
        for t in threads:
            t.start()
        _until("a checkpoint of every stream", lambda: all(any(
            r[:2] == ("assistant", "in_progress") and r[2] for r in _turns(cluster_redis, sid))
            for sid in sids), 15)
        doomed.kill()
        t0 = time.monotonic()
        texts = [_turns(cluster_redis, sid)[-1][2] for sid in sids]  # nothing writes now
        for t in threads:
            t.join(15)
        took = time.monotonic() - t0
        marked = _until("B marking the transcripts", lambda: all(
            _turns(cluster_redis, sid)[-1][1] == "interrupted" for sid in sids), 10)
    finally:
        doomed.stop()
    for sid, text in zip(sids, texts, strict=True):
        read = out[sid]
        assert read.last.event == "error", read.events[-2:]
        assert read.data()["code"] == "interrupted" and read.data()["retryable"] is True
        rows = _turns(cluster_redis, sid)
        assert [r[:2] for r in rows] == [("user", "interrupted"), ("assistant", "interrupted")]
        assert rows[-1][2] == text and rows[-1][3] == "crashed" and text
        assert probe_text(100_000).startswith(text), text[:80]
        conv = firsts[sids.index(sid)].headers["x-conversation-id"]
        turns = httpx.get(b.url(f"/v1/conversations/{conv}"), timeout=10).json()["turns"]
        assert turns[-1]["outcome"] == "interrupted" and turns[-1]["content"] == text
    assert took < SWEEP_BOUND, took
    assert took + marked < SWEEP_BOUND + 2.0, (took, marked)  # one write after the sweep
    # whichever live server swept them (A's workers sweep too) said so
    assert any("marked the transcripts of" in srv.log() for srv in servers)


def test_redis_restart_mid_stream(cluster_redis: RedisServer,
                                  servers: tuple[Server, Server]) -> None:
    """Redis restarts (data lost) mid-stream: A's client gets the whole stream; a resume on
    B afterwards either continues without a gap or says `reset` explicitly."""
    a, b = servers
    got: dict[str, Read] = {}
    t = threading.Thread(target=lambda: got.setdefault("a", chat(a, tokens=300,
                                                                 interval_ms=5)))
    t.start()
    sid = _running_stream(cluster_redis.url)
    cut = resume(b, sid, cut_after=5)
    assert cut.status == 200 and len(cut.events) == 5, cut
    cluster_redis.restart()
    t.join(30)
    whole = got["a"]
    assert whole.last.event == "done" and whole.text == probe_text(300)
    later = resume(b, sid, cut.last.id)  # a cursor of the log Redis lost
    assert later.status == 200, later
    kinds = [e.event for e in later.events]
    assert kinds[-1] == "done", kinds[-3:]
    if "reset" in kinds:  # explicit: what follows is the recreated log, in order
        after = "".join(str(json.loads(e.data)["text"]) for e in
                        later.events[kinds.index("reset"):] if e.event == "delta")
        assert probe_text(300).endswith(after)
    else:  # or it continues with no gap and no repeat
        assert cut.text + later.text == probe_text(300)


def _running_stream(redis_url: str) -> str:
    """The id of a stream that is running (from Redis' running set), once there is one."""
    client: Any = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            running = client.zrange("sb:running", 0, -1)
            if running:
                return str(running[0].decode())
            time.sleep(0.01)
    finally:
        client.close()
    raise AssertionError("no stream started")
