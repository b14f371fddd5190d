"""Every wire format of the native route, and the contract's headers, on every path."""

from __future__ import annotations

import json

import httpx

from async_core.demo import demo_text
from tests.clients import CHAT, chat_body, stream
from tests.contract._loops import path_id_on_both_loops  # noqa: F401 - fixture
from tests.servers import Server, served_path

OPTS = {"tokens": 6, "interval_ms": 5, "states": 3}


def test_sse_stream_numbers_events_and_ends_with_done(server: Server) -> None:
    """SSE carries deltas and states with stream-log ids (one stream tag and epoch,
    positions 1..n) and exactly one final done."""
    r = stream(server.url("/v1/chat"), chat_body(**OPTS))
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text() == demo_text(OPTS)
    parts = [e.id.split("-") for e in r.events]
    assert len({(p[0], p[1]) for p in parts}) == 1
    assert [p[2:] for p in parts] == [[str(i), "0"] for i in range(1, len(r.events) + 1)]
    assert r.kinds().count("done") == 1 and r.kinds()[-1] == "done"
    assert r.kinds().count("state") == 2
    done = json.loads(r.events[-1].data)
    assert done["tokens"] == 6 and done["finish_reason"] == "stop"
    assert done["conversation_id"] == r.headers["x-conversation-id"]
    assert done["ttfc_ms"] >= 0 and done["duration_ms"] >= done["ttfc_ms"]


def test_every_stream_carries_the_contract_headers(server: Server) -> None:
    """X-Stream-Id, X-Conversation-Id, X-Stream-Path, no-store and no proxy buffering."""
    r = stream(server.url("/v1/chat"), {**chat_body(tokens=2), "conversation_id": "conv-1"})
    h = r.headers
    assert len(h["x-stream-id"]) >= 16
    assert h["x-conversation-id"] == "conv-1"
    assert h["x-stream-path"] == served_path(server.path_id, "conv-1")
    assert h["cache-control"] == "no-store"
    assert h["x-accel-buffering"] == "no"


def test_ndjson_by_accept_header_and_by_query(server: Server) -> None:
    """NDJSON is chosen by Accept or ?format=, one object per line with an event key."""
    for url, headers in ((server.url("/v1/chat"), {"accept": "application/x-ndjson"}),
                         (server.url("/v1/chat?format=ndjson"), {})):
        r = stream(url, chat_body(**OPTS), headers=headers)
        assert r.headers["content-type"].startswith("application/x-ndjson")
        assert r.text() == demo_text(OPTS)
        assert r.kinds()[-1] == "done"
        assert [e["seq"] for e in r.events] == list(range(1, len(r.events) + 1))
        assert [e["id"].split("-")[2] for e in r.events] == [str(e["seq"]) for e in r.events]


def test_plain_text_is_just_the_text(server: Server) -> None:
    """text/plain streams exactly the agent's text and nothing else."""
    r = stream(server.url("/v1/chat"), chat_body(**OPTS), headers={"accept": "text/plain"})
    assert r.headers["content-type"].startswith("text/plain")
    assert r.raw.decode() == demo_text(OPTS)


def test_plain_text_reports_a_failure_in_band(server: Server) -> None:
    """A failure after the first byte of a text stream is a last [error] line."""
    r = stream(server.url("/v1/chat?format=text"), chat_body(tokens=5, fail_at=2))
    assert r.raw.decode().endswith("\n[error] agent_error: demo agent: planned failure "
                                   "after 2 tokens\n")


def test_non_stream_returns_one_json_body(server: Server) -> None:
    """stream:false returns the whole reply as one JSON object."""
    r = httpx.post(server.url("/v1/chat"), json={**chat_body(**OPTS), "stream": False},
                   timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["text"] == demo_text(OPTS)
    assert body["tokens"] == 6 and body["finish_reason"] == "stop"
    assert len(body["states"]) == 2
    assert r.headers["x-stream-path"] == served_path(server.path_id,
                                                     r.headers["x-conversation-id"])


def test_message_shorthand_is_a_user_message(server: Server) -> None:
    """{"message": str} is accepted as a single user turn."""
    r = stream(server.url("/v1/chat"), {"message": "hi", "options": {"tokens": 3}})
    assert r.status == 200 and r.text() == demo_text({"tokens": 3})


def test_openai_stream_never_sends_ids_or_event_names(server: Server) -> None:
    """The OpenAI route sends only data: lines (openai-python#2722), ending in [DONE]."""
    body = {"model": "demo", "messages": CHAT["messages"], "stream": True,
            "options": {"tokens": 4, "interval_ms": 300}}
    r = stream(server.url("/v1/chat/completions"), body)
    lines = [ln for ln in r.raw.decode().split("\n") if ln]
    assert all(ln.startswith(("data: ", ":")) for ln in lines), lines
    assert any(ln.startswith(":") for ln in lines), "a heartbeat should have crossed the pauses"
    assert r.events[-1].data == "[DONE]"


def test_async_only_and_sync_only_agents_stream_on_every_path(server: Server) -> None:
    """An agent with one form runs anywhere: async natively, sync through the bridge."""
    from tests.probe_agents import probe_text

    r = stream(server.url("/v1/chat"), chat_body("probe-async", tokens=5, interval_ms=2))
    assert r.status == 200
    assert r.text() == probe_text(5)
    if server.path_id.startswith("legacy"):
        r = stream(server.url("/v1/chat"), chat_body("probe-sync", tokens=5, interval_ms=2))
        assert r.text() == probe_text(5)
