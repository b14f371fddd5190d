"""Redis lost while a server runs on it: running streams finish, new ones are still served;
and a server that drains ends its readers of another process' streams in-band.

A real ``redis-server`` (Debian package) on a loopback port, one server per path (async
and legacy-gevent: the two loops the log runs on), stopped mid-stream and restarted.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import httpx
import pytest

from tests.probe_agents import probe_text
from tests.servers import Server
from tests.streamlog.conftest import RedisServer


@pytest.fixture(scope="module", params=["async", "legacy-gevent"])
def path_id(request: pytest.FixtureRequest) -> str:
    """Two paths only: the log's behaviour does not depend on the transport."""
    return str(request.param)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the module."""
    srv = RedisServer()
    yield srv
    srv.close()


def body(tokens: int) -> dict[str, object]:
    return {"message": "hi", "agent": "probe", "options": {"tokens": tokens, "interval_ms": 10}}


def test_a_redis_outage_never_breaks_a_stream(path_id: str, redis_server: RedisServer) -> None:
    """Redis stops mid-stream: that stream ends whole; a new stream is served without the
    log (200, whole, not resumable), a resume is a 503 JSON error; once Redis is back new
    streams are resumable again."""
    redis_server.command("FLUSHALL")
    srv = Server(path_id, {"STREAMBRIDGE_REDIS_URL": redis_server.url,
                           "STREAMBRIDGE_REDIS_RETRY": "0.05"})
    try:
        text, sid = "", ""
        with httpx.stream("POST", srv.url("/v1/chat?format=ndjson"), json=body(60),
                          timeout=20) as r:
            sid = r.headers["x-stream-id"]
            for n, line in enumerate(r.iter_lines()):
                if n == 5:
                    redis_server.stop()
                if '"delta"' in line:
                    text += httpx.Response(200, content=line).json()["text"]
        assert text == probe_text(60)
        during = httpx.post(srv.url("/v1/chat"), json=body(5), timeout=20)
        assert during.status_code == 200 and "event: done" in during.text
        resume = httpx.get(srv.url(f"/v1/streams/{sid}"), timeout=20)
        assert resume.status_code == 503 and "retry-after" in resume.headers
        assert resume.json()["error"]["code"] == "overloaded"
        redis_server.start()
        after = httpx.post(srv.url("/v1/chat"), json=body(3), timeout=20)
        again = httpx.get(srv.url(f"/v1/streams/{after.headers['x-stream-id']}"), timeout=20)
        assert again.status_code == 200 and again.text == after.text
    finally:
        srv.stop()
        if redis_server.proc is None:
            redis_server.start()
    assert not srv.problems(), "\n".join(srv.problems())


def test_a_reader_of_another_processs_stream_ends_in_band_at_a_drain(
        path_id: str, redis_server: RedisServer) -> None:
    """Server B follows a stream server A runs (one Redis); SIGTERM to B: its reader ends
    with ``error`` ``shutdown`` (retryable, an id to resume from); A's run goes on."""
    env = {"STREAMBRIDGE_REDIS_URL": redis_server.url, "STREAMBRIDGE_DRAIN_GRACE": "0.5"}
    a, b = Server("async", env), Server(path_id, env)
    try:
        started = httpx.post(a.url("/v1/chat"), timeout=10,
                             json={**body(3000), "background": True})
        sid = started.json()["stream_id"]
        lines: list[str] = []
        with httpx.stream("GET", b.url(f"/v1/streams/{sid}"), timeout=15) as r:
            it = r.iter_lines()
            for line in it:
                lines.append(line)
                if line.startswith("event: delta"):
                    break
            b.signal(signal.SIGTERM)
            lines += list(it)
        last = [line for line in lines if line.startswith(("id: ", "data: "))][-2:]
        assert last[0].split("-")[0] == f"id: {sid_tag(lines)}"
        assert '"code":"shutdown"' in last[1] and '"retryable":true' in last[1]
        assert b.wait(timeout=20) is not None
        meta = httpx.post(a.url(f"/v1/streams/{sid}/cancel"), timeout=10).json()
        assert meta["status"] == "error" and meta["outcome"] == "cancelled"  # it ran on
    finally:
        a.stop()
        b.stop()
    assert not a.problems() and not b.problems(), a.problems() + b.problems()


def sid_tag(lines: list[str]) -> str:
    """The stream tag of the first event id in ``lines``."""
    return next(line[4:] for line in lines if line.startswith("id: ")).split("-")[0]
