"""Each timeout ends the stream with its terminal event, its outcome and its metric."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from tests.clients import RawStream, chat_body, metric, stream, wait_for
from tests.contract._loops import path_id_on_both_loops  # noqa: F401 - fixture
from tests.servers import Server

CASES = {
    "first_chunk_timeout": chat_body(tokens=3, first_token_delay_ms=2000),
    "idle_timeout": chat_body(tokens=3, interval_ms=2000),
    "total_timeout": chat_body(tokens=1000, interval_ms=20),
}


# One server per path for the three timeouts, the heartbeats and the never-pausing agent.
TIMEOUTS = {"first_chunk_timeout": 0.4, "idle_timeout": 0.4, "total_timeout": 0.6,
            "heartbeat": 0.1, "retries": 0}


@pytest.mark.parametrize("code", list(CASES))
def test_timeout_ends_with_its_error_event_and_metric(shared_server: Callable[..., Server],
                                                      code: str) -> None:
    """The stream ends with event error {code}, retryable as documented, counted once."""
    srv = shared_server(**TIMEOUTS)
    before = metric(srv.base_url, "streambridge_streams_total", outcome=code)
    started = time.monotonic()
    r = stream(srv.url("/v1/chat"), CASES[code])
    assert time.monotonic() - started < 1.8
    assert r.kinds()[-1] == "error"
    assert r.kinds().count("error") == 1
    assert "done" not in r.kinds()
    error = json.loads(r.events[-1].data)
    assert error["code"] == code
    wait_for(lambda: metric(srv.base_url, "streambridge_streams_total",
                            outcome=code) == before + 1)


def test_heartbeats_do_not_reset_the_idle_timeout(shared_server: Callable[..., Server]) -> None:
    """Heartbeats flow during a long gap, and the gap still ends in idle_timeout (the
    instants themselves: test_policy, on virtual time)."""
    srv = shared_server(**TIMEOUTS)
    r = stream(srv.url("/v1/chat"), chat_body(tokens=3, interval_ms=3000))
    assert r.raw.count(b": ping") >= 2
    assert json.loads(r.events[-1].data)["code"] == "idle_timeout"


def test_send_timeout_ends_a_stream_whose_client_stopped_reading(
        make_server: Callable[..., Server]) -> None:
    """A client that stops reading is dropped after the send timeout (outcome send_timeout)."""
    srv = make_server(send_timeout=0.5)
    client = RawStream(srv.port, "/v1/chat",
                       chat_body("probe", tokens=200_000, interval_ms=0, pad=2000),
                       rcvbuf=4096)
    client.read_until(b"event: delta", 1)
    # stop reading: the kernel buffers fill, the server's writes block, the timeout fires
    wait_for(lambda: metric(srv.base_url, "streambridge_streams_total",
                            outcome="send_timeout") == 1, timeout=20)
    client.close()


def test_total_timeout_ends_a_stream_whose_agent_never_pauses(
        shared_server: Callable[..., Server]) -> None:
    """An agent that never awaits or sleeps still ends at the total timeout, in-band, once."""
    srv = shared_server(**TIMEOUTS)
    total = TIMEOUTS["total_timeout"]
    before = metric(srv.base_url, "streambridge_streams_total", outcome="total_timeout")
    started = time.monotonic()
    r = stream(srv.url("/v1/chat"), chat_body("probe", tokens=50_000_000, interval_ms=0),
               timeout=20)
    elapsed = time.monotonic() - started
    assert r.status == 200
    assert r.kinds().count("error") == 1
    assert r.kinds()[-1] == "error", r.kinds()[-3:]
    assert "done" not in r.kinds()
    assert json.loads(r.events[-1].data)["code"] == "total_timeout"
    assert elapsed < total + 1.5, f"ended after {elapsed:.2f} s"
    wait_for(lambda: metric(srv.base_url, "streambridge_streams_total",
                            outcome="total_timeout") == before + 1)
