"""Admission: stream slots with a timeout (503), a rate limit (429), a separate buffered pool."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.clients import RawStream, chat_body, metric, stream, wait_for
from tests.servers import Server


def test_full_stream_slots_give_503_with_retry_after(make_server: Callable[..., Server]) -> None:
    """With max_streams=1 busy, the next stream waits the admission timeout and gets 503."""
    srv = make_server(max_streams=1, admission_timeout=0.3)
    client = RawStream(srv.port, "/v1/chat", chat_body(tokens=1000, interval_ms=20))
    client.read_until(b"event: delta", 1)
    r = httpx.post(srv.url("/v1/chat"), json=chat_body(tokens=1), timeout=10)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "overloaded"
    assert int(r.headers["retry-after"]) >= 1
    assert metric(srv.base_url, "streambridge_streams_total", outcome="rejected") == 1
    # buffered requests have their own pool: long streams never starve them
    short = httpx.post(srv.url("/v1/chat"), json={**chat_body(tokens=2), "stream": False},
                       timeout=10)
    assert short.status_code == 200
    client.close()


def test_rate_limit_gives_429_with_retry_after(make_server: Callable[..., Server]) -> None:
    """Over the request rate, a request is refused at once with 429 and Retry-After."""
    srv = make_server(rate_limit=2)
    codes = [httpx.post(srv.url("/v1/chat"), json={**chat_body(tokens=1), "stream": False},
                        timeout=10) for _ in range(6)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited, [r.status_code for r in codes]
    assert limited[0].json()["error"]["code"] == "rate_limited"
    assert int(limited[0].headers["retry-after"]) >= 1


def test_active_streams_gauge_follows_open_streams(server: Server) -> None:
    """streambridge_active_streams counts a running stream and drops when it ends."""
    # the server is shared: an earlier test's stream may still be ending
    wait_for(lambda: metric(server.base_url, "streambridge_active_streams") == 0)
    client = RawStream(server.port, "/v1/chat", chat_body(tokens=1000, interval_ms=20))
    client.read_until(b"event: delta", 1)
    wait_for(lambda: metric(server.base_url, "streambridge_active_streams") == 1)
    client.close()
    wait_for(lambda: metric(server.base_url, "streambridge_active_streams") == 0)


@pytest.mark.parametrize("send_timeout", [2, 0])
def test_a_stream_that_fails_before_its_first_byte_frees_its_slot_at_once(
        make_server: Callable[..., Server], send_timeout: int) -> None:
    """max_streams=1: after an agent failure answered as HTTP 502, the next stream gets 200."""
    # header_hold: the failure must be answered before a loaded machine commits headers
    srv = make_server(max_streams=1, admission_timeout=0, retries=0, send_timeout=send_timeout,
                      header_hold=5)
    for _ in range(2):
        failed = httpx.post(srv.url("/v1/chat"), json=chat_body(tokens=5, fail_before_first=10),
                            timeout=10)
        assert failed.status_code == 502
        r = stream(srv.url("/v1/chat"), chat_body(tokens=3, interval_ms=1), timeout=10)
        assert r.status == 200, r.raw
        assert r.kinds()[-1] == "done"
    wait_for(lambda: metric(srv.base_url, "streambridge_active_streams") == 0)
