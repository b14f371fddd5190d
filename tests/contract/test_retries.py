"""The agent is retried only before the first byte; after it, failures are in-band."""

from __future__ import annotations

import json

from async_core.demo import demo_text
from tests.clients import chat_body, stream
from tests.servers import Server


def test_failure_before_first_output_is_retried_into_one_clean_stream(server: Server) -> None:
    """Two failed attempts, then success: the client sees one ordinary stream."""
    opts = {"tokens": 5, "fail_before_first": 2, "interval_ms": 1}
    r = stream(server.url("/v1/chat"), chat_body(**opts))
    assert r.kinds() == ["delta"] * len(r.kinds()[:-1]) + ["done"]
    assert r.text() == demo_text(opts)


def test_failure_after_first_output_is_an_error_event_not_a_retry(server: Server) -> None:
    """After deltas were sent the stream ends with error agent_error, text not repeated."""
    r = stream(server.url("/v1/chat"), chat_body(tokens=6, fail_at=3, interval_ms=1))
    assert r.kinds()[-1] == "error"
    assert r.text() == demo_text({"tokens": 3})
    error = json.loads(r.events[-1].data)
    assert error == {"code": "agent_error", "retryable": False,
                     "message": "demo agent: planned failure after 3 tokens"}


def test_retries_exhausted_before_first_output_is_an_error_event(server: Server) -> None:
    """More failures than retries: one error event, no delta."""
    r = stream(server.url("/v1/chat"), chat_body(tokens=5, fail_before_first=10))
    assert r.kinds() == ["error"]
    assert json.loads(r.events[0].data)["retryable"] is True
