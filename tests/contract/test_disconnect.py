"""A client that leaves stops its agent, and its slot is free for the next request."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.clients import PIN, RawStream, chat_body, metric, wait_for
from tests.contract._loops import path_id_on_both_loops  # noqa: F401 - fixture
from tests.probe_agents import read_probe
from tests.servers import Server


def test_disconnect_after_three_chunks_stops_the_agent_within_a_second(
        server: Server, tmp_path: Path) -> None:
    """The agent's finally runs within 1 s and it produced at most 3 tokens more."""
    probe = str(tmp_path / "probe.jsonl")
    client = RawStream(server.port, "/v1/chat",
                       chat_body("probe", tokens=10_000, interval_ms=20, probe_file=probe))
    client.read_until(b"event: delta", 3)
    left = time.time()
    client.close()
    record = wait_for(lambda: read_probe(probe), timeout=5)[0]
    assert record["t"] - left < 1.0
    assert record["produced"] <= 3 + 3


def test_never_awaiting_async_agent_is_cancelled_and_the_server_stays_responsive(
        server: Server, tmp_path: Path) -> None:
    """An agent that never awaits cannot starve the loop or outlive its client."""
    probe = str(tmp_path / "probe.jsonl")
    client = RawStream(server.port, "/v1/chat",
                       chat_body("probe", tokens=1_000_000, interval_ms=0, probe_file=probe))
    client.read_until(b"event: delta", 3)
    started = time.monotonic()
    assert httpx.get(server.url("/healthz"), timeout=5).status_code == 200
    assert time.monotonic() - started < 1.0
    client.close()
    record = wait_for(lambda: read_probe(probe), timeout=5)[0]
    assert record["produced"] < 1_000_000


OUTCOME_REQUESTS: dict[str, dict[str, object]] = {
    "completed": chat_body(tokens=3, interval_ms=1),
    "agent_error": chat_body(tokens=5, fail_at=2, interval_ms=1),
    "idle_timeout": chat_body(tokens=3, interval_ms=800),
    "first_chunk_timeout": chat_body(tokens=3, first_token_delay_ms=800),
}


@pytest.mark.parametrize("outcome", [*OUTCOME_REQUESTS, "client_disconnected"])
def test_slot_is_released_on_every_outcome(shared_server: Callable[..., Server],
                                           outcome: str) -> None:
    """With max_streams=1, the next request gets 200 after each kind of ending."""
    srv = shared_server(max_streams=1, admission_timeout=0.2, idle_timeout=0.3,
                        first_chunk_timeout=0.3, retries=0)
    before = metric(srv.base_url, "streambridge_streams_total", outcome=outcome)
    if outcome == "client_disconnected":
        client = RawStream(srv.port, "/v1/chat", chat_body(tokens=1000, interval_ms=20))
        client.read_until(b"event: delta", 3)
        client.close()
    else:
        ended = httpx.post(srv.url("/v1/chat"), json=PIN.apply(OUTCOME_REQUESTS[outcome]),
                           timeout=10)
    try:
        wait_for(lambda: metric(srv.base_url, "streambridge_streams_total",
                                outcome=outcome) == before + 1)
    except TimeoutError:  # say how the stream ended (one CI run saw no "completed")
        answer = "" if outcome == "client_disconnected" else (
            f"{ended.status_code} {ended.text[-300:]!r}")
        raise AssertionError(f"no {outcome} counted; answer {answer}; server log "
                             f"{srv.log()[-1500:]}") from None
    r = httpx.post(srv.url("/v1/chat"), json=chat_body(tokens=2, interval_ms=1), timeout=10)
    assert r.status_code == 200
    assert "event: done" in r.text
