"""The agent is retried only before the first byte; after it, failures are in-band."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from async_core.demo import demo_text
from tests.clients import RawStream, chat_body, stream
from tests.servers import Server

# The retries of a failing agent must end before the header hold commits the headers (the
# 502 tests): on a loaded 2-core machine three attempts once took over the default 1 s.
HOLD = 5.0


@pytest.fixture
def held(shared_server: Callable[..., Server]) -> Server:
    """A server whose header hold outlasts any retry sequence (shared by the module)."""
    return shared_server(header_hold=HOLD)


def test_failure_before_first_output_is_retried_into_one_clean_stream(held: Server) -> None:
    """Two failed attempts, then success: the client sees one ordinary stream."""
    opts = {"tokens": 5, "fail_before_first": 2, "interval_ms": 1}
    r = stream(held.url("/v1/chat"), chat_body(**opts))
    assert r.kinds() == ["delta"] * len(r.kinds()[:-1]) + ["done"]
    assert r.text() == demo_text(opts)


def test_failure_after_first_output_is_an_error_event_not_a_retry(held: Server) -> None:
    """After deltas were sent the stream ends with error agent_error, text not repeated."""
    r = stream(held.url("/v1/chat"), chat_body(tokens=6, fail_at=3, interval_ms=1))
    assert r.kinds()[-1] == "error"
    assert r.text() == demo_text({"tokens": 3})
    error = json.loads(r.events[-1].data)
    assert error == {"code": "agent_error", "retryable": False,
                     "message": "demo agent: planned failure after 3 tokens"}


def test_retries_exhausted_before_the_first_byte_is_an_http_error(held: Server) -> None:
    """More failures than retries, nothing sent yet: an ordinary 502 with a JSON error."""
    r = stream(held.url("/v1/chat"), chat_body(tokens=5, fail_before_first=10))
    assert r.status == 502
    error = json.loads(r.raw)["error"]
    assert error["code"] == "agent_error"
    assert "planned failure" in error["message"]
    assert r.headers["x-stream-id"]


def test_openai_client_sees_a_failure_before_the_first_byte_as_a_status_error(
        held: Server) -> None:
    """The official client raises its 502 error type, not a broken stream."""
    import openai

    with openai.OpenAI(base_url=held.url("/v1"), api_key="x", max_retries=0) as client:
        with pytest.raises(openai.InternalServerError, match="planned failure"):
            list(client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "x"}], stream=True,
                extra_body={"options": {"fail_before_first": 10}}))


def test_a_silent_agent_commits_headers_after_the_header_hold(
        make_server: Callable[..., Server]) -> None:
    """Headers wait for the first frame, at most header_hold: then a heartbeat sends them."""
    srv = make_server(heartbeat=5, header_hold=0.5)
    client = RawStream(srv.port, "/v1/chat", chat_body(tokens=2, first_token_delay_ms=2000))
    started = time.monotonic()
    head = client.read_until(b": ping", 1, timeout=10)
    waited = time.monotonic() - started
    client.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert 0.4 <= waited < 1.5
