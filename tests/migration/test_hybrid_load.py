"""A burst of 500 concurrent SSE streams on ONE worker, on the async path and on the
hybrid front (both branches): every stream completes with exactly one ``done``.

Prints each path's time-to-first-chunk p50/p99 (the async path is the same-run
baseline; issue 10 "Load"); timing is not asserted (shared machines are noisy).
What made the Flask branch cheaper is asserted: its streams are written from the loop
and hold no WSGI thread after their first frame.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.clients import RawStream, chat_body, metric, wait_for
from tests.probe_agents import probe_text
from tests.servers import Server

STREAMS, TOKENS = 500, 40
BURST_PATHS = ["async", "hybrid-0", "hybrid-100"]


@pytest.fixture(scope="module", params=BURST_PATHS)
def burst_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """One worker with room for the burst (stream slots, file descriptors)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    srv = Server(request.param, {"STREAMBRIDGE_MAX_STREAMS": "2000",
                                 "STREAMBRIDGE_ADMISSION_TIMEOUT": "30"})
    yield srv
    srv.stop()
    assert not srv.problems(), srv.problems()


async def _stream(port: int, body: bytes, start: float) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    chunks: list[bytes] = []
    ttfc = -1.0
    try:
        while chunk := await reader.read(65536):
            # The first delta, looked for in the new bytes only (the client is on the
            # same two cores: it must not scan the whole body at every read).
            if ttfc < 0 and b"event: delta" in (chunks[-1][-16:] if chunks else b"") + chunk:
                ttfc = time.monotonic() - start
            chunks.append(chunk)
        return b"".join(chunks), ttfc
    finally:
        writer.close()


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_a_burst_of_500_streams_all_complete_with_one_done(burst_server: Server) -> None:
    """500 streams opened at once on one worker each get the whole text and one ``done``."""

    async def main() -> list[tuple[bytes, float]]:
        start = time.monotonic()
        jobs = []
        for i in range(STREAMS):
            body = json.dumps({"agent": "probe", "conversation_id": f"burst-{i}",
                               "messages": [{"role": "user", "content": "x"}],
                               "options": {"tokens": TOKENS, "interval_ms": 25}}).encode()
            jobs.append(_stream(burst_server.port, body, start))
        return await asyncio.wait_for(asyncio.gather(*jobs), timeout=120)

    results = asyncio.run(main())
    expected = probe_text(TOKENS)
    for raw, _ in results:
        text = "".join(json.loads(line[6:])["text"] for line in raw.decode().split("\n")
                       if line.startswith("data: {\"text\""))
        assert text == expected, raw[:300]
        assert raw.count(b"event: done") == 1
    ttfcs = [t for _, t in results]
    print(f"\n{burst_server.path_id}: {STREAMS} streams, TTFC p50 "
          f"{_quantile(ttfcs, 0.5) * 1000:.0f} ms, p99 {_quantile(ttfcs, 0.99) * 1000:.0f} ms")


def test_a_flask_branch_stream_frees_its_wsgi_thread_after_its_first_frame() -> None:
    """With 2 WSGI threads, 6 Flask-branch streams run at once; each still ends on a disconnect."""
    srv = Server("hybrid-0", {"STREAMBRIDGE_HYBRID_THREADS": "2",
                              "STREAMBRIDGE_ADMISSION_TIMEOUT": "0.3"})
    clients: list[RawStream] = []
    try:
        for _ in range(6):
            clients.append(RawStream(srv.port, "/v1/chat",
                                     chat_body(tokens=10_000, interval_ms=50)))
            head = clients[-1].read_until(b"event: delta", 2, timeout=10)
            assert head.startswith(b"HTTP/1.1 200"), head[:300]
            assert b"x-stream-path: legacy" in head.lower()
        assert httpx.get(srv.url("/readyz"), timeout=5).json()["active_streams"] == 6
        for c in clients:
            c.close()
        wait_for(lambda: metric(srv.base_url, "streambridge_streams_total",
                                outcome="client_disconnected", path="legacy") == 6)
    finally:
        for c in clients:
            c.close()
        srv.stop()
    assert not srv.problems(), srv.problems()


def test_a_flask_branch_stream_waits_for_its_first_frame_without_a_wsgi_thread() -> None:
    """With one WSGI thread, three streams whose agents take 1.5 s to their first token
    wait at once, and the Flask branch answers another request meanwhile."""
    srv = Server("hybrid-0", {"STREAMBRIDGE_HYBRID_THREADS": "1", "STREAMBRIDGE_HEADER_HOLD": "5",
                              "STREAMBRIDGE_ADMISSION_TIMEOUT": "0.3"})
    try:
        body = chat_body(tokens=3, first_token_delay_ms=1500)
        started = time.monotonic()
        clients = [RawStream(srv.port, "/v1/chat", body) for _ in range(3)]
        # /readyz and /healthz are Flask routes: each needs the WSGI thread
        wait_for(lambda: httpx.get(srv.url("/readyz"), timeout=5).json().get("active_streams") == 3)
        health = httpx.get(srv.url("/healthz"), timeout=5)
        assert health.status_code == 200, health.text
        assert time.monotonic() - started < 1.4  # all this while the agents are silent
        for c in clients:
            raw = c.read_until(b"event: done", 1, timeout=10)
            assert raw.startswith(b"HTTP/1.1 200") and b"x-stream-path: legacy" in raw.lower()
    finally:
        srv.stop()
    assert not srv.problems(), srv.problems()
