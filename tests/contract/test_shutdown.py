"""SIGTERM drains: not ready, no new streams, running streams end in-band, then exit."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable

import httpx

from tests.clients import chat_body, stream, wait_for
from tests.servers import Server


def test_sigterm_ends_every_open_stream_with_a_terminal_event_and_exits(
        make_server: Callable[..., Server]) -> None:
    """Open streams get the grace period, then error shutdown (retryable); the process exits."""
    srv = make_server(drain_grace=1.0)
    results: list[object] = []

    def read() -> None:
        results.append(stream(srv.url("/v1/chat"), chat_body(tokens=10_000, interval_ms=50),
                              timeout=30))

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    wait_for(lambda: httpx.get(srv.url("/readyz"), timeout=5).json()["active_streams"] == 3)
    started = time.monotonic()
    srv.signal(signal.SIGTERM)
    wait_for(lambda: httpx.get(srv.url("/readyz"), timeout=5).status_code == 503, timeout=3)
    refused = httpx.post(srv.url("/v1/chat"), json=chat_body(tokens=1), timeout=5)
    assert refused.status_code == 503
    assert refused.headers["retry-after"]
    for t in readers:
        t.join(timeout=20)
    assert len(results) == 3
    for r in results:
        assert r.kinds()[-1] == "error"  # type: ignore[attr-defined]
        error = json.loads(r.events[-1].data)  # type: ignore[attr-defined]
        assert error["code"] == "shutdown"
        assert error["retryable"] is True
    srv.wait(timeout=15)
    assert time.monotonic() - started < 1.0 + 10


def test_sigterm_with_no_streams_exits_promptly(make_server: Callable[..., Server]) -> None:
    """An idle server exits soon after SIGTERM."""
    srv = make_server()
    started = time.monotonic()
    srv.signal(signal.SIGTERM)
    srv.wait(timeout=15)
    assert time.monotonic() - started < 5


def test_sigterm_drains_streams_whose_agent_never_pauses_within_the_grace(
        make_server: Callable[..., Server]) -> None:
    """Never-pausing streams end with error shutdown at the grace; the process exits soon after."""
    grace = 1.0
    srv = make_server(drain_grace=grace)
    results: list[object] = []

    def read() -> None:
        results.append(stream(srv.url("/v1/chat"),
                              chat_body("probe", tokens=50_000_000, interval_ms=0), timeout=30))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    wait_for(lambda: httpx.get(srv.url("/readyz"), timeout=5).json()["active_streams"] == 2,
             timeout=10)
    started = time.monotonic()
    srv.signal(signal.SIGTERM)
    for t in readers:
        t.join(timeout=20)
    ended = time.monotonic() - started
    assert len(results) == 2
    for r in results:
        assert r.kinds().count("error") == 1  # type: ignore[attr-defined]
        assert r.kinds()[-1] == "error"  # type: ignore[attr-defined]
        assert json.loads(r.events[-1].data)["code"] == "shutdown"  # type: ignore[attr-defined]
    assert ended < grace + 1.5, f"streams ended {ended:.2f} s after SIGTERM"
    srv.wait(timeout=15)
    exited = time.monotonic() - started
    assert exited < grace + 3.0, f"exited {exited:.2f} s after SIGTERM"
