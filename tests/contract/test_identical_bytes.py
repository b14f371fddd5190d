"""For the deterministic demo agent every path sends the same bytes.

Only ids, timestamps and durations may differ (and the X-Stream-Path header; of the
stream-log event ids only the stream's tag and the log's epoch):
they are normalised below, and everything else must match byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import PATH_ARGS, Server

# Paced so that no two deltas coalesce into one frame on any path.
OPTS = {"tokens": 8, "interval_ms": 40, "states": 3, "text": "Ünïcode\u2028line 😀 and \"quotes\" "}
CONTRACT_HEADERS = ("content-type", "cache-control", "x-accel-buffering", "x-conversation-id")
REQUESTS = {
    "sse": ("/v1/chat", {"messages": [{"role": "user", "content": "hi"}], "options": OPTS}, {}),
    "ndjson": ("/v1/chat", {"messages": [{"role": "user", "content": "hi"}], "options": OPTS},
               {"accept": "application/x-ndjson"}),
    "text": ("/v1/chat?format=text", {"message": "hi", "options": OPTS}, {}),
    "json": ("/v1/chat", {"message": "hi", "stream": False, "options": OPTS}, {}),
    "openai": ("/v1/chat/completions", {"model": "demo", "stream": True, "options": OPTS,
                                        "messages": [{"role": "user", "content": "hi"}],
                                        "stream_options": {"include_usage": True}}, {}),
    "ollama-chat": ("/api/chat", {"model": "demo", "options": OPTS,
                                  "messages": [{"role": "user", "content": "hi"}]}, {}),
    "ollama-generate": ("/api/generate", {"model": "demo", "prompt": "hi", "options": OPTS}, {}),
    "error": ("/v1/chat", {"message": "hi", "options": {**OPTS, "fail_at": 2}}, {}),
    "bad-input": ("/v1/chat", {"messages": []}, {}),
}
VOLATILE = [
    (re.compile(rb'"(ttfc_ms|duration_ms)":[0-9.]+'), rb'"\1":0'),
    (re.compile(rb'"(total_duration|eval_duration|created)":[0-9]+'), rb'"\1":0'),
    (re.compile(rb'"created_at":"[^"]+"'), rb'"created_at":"T"'),
    (re.compile(rb'"(stream_id|id)":"(chatcmpl-)?[0-9a-f]{32}"'), rb'"\1":"\2ID"'),
    # Stream-log event ids: the stream's tag and the log's epoch vary, positions do not.
    (re.compile(rb'(id: |"id":")[0-9a-f]{6}-[0-9a-z]{1,16}-'), rb'\1T-E-'),
]


def _normalise(raw: bytes) -> bytes:
    for pattern, repl in VOLATILE:
        raw = pattern.sub(repl, raw)
    return raw


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Server]]:
    """One server per path, all at once (this module does not use the per-path fixture)."""
    started: dict[str, Server] = {}
    try:
        for path_id in PATH_ARGS:
            started[path_id] = Server(path_id)
        yield started
    finally:
        for srv in started.values():
            srv.stop()


@pytest.mark.parametrize("case", list(REQUESTS))
def test_every_path_sends_the_same_bytes(servers: dict[str, Server], case: str) -> None:
    """Status, contract headers and normalised body are identical on every path."""
    route, body, headers = REQUESTS[case]
    seen: dict[str, tuple[int, dict[str, str], bytes]] = {}
    for path_id, srv in servers.items():
        r = httpx.post(srv.url(route), json={**body, "conversation_id": "conv-1"},
                       headers=headers, timeout=30)
        contract = {h: r.headers.get(h, "") for h in CONTRACT_HEADERS}
        seen[path_id] = (r.status_code, contract, _normalise(r.content))
    first_id, first = next(iter(seen.items()))
    for path_id, result in seen.items():
        assert result == first, f"{path_id} differs from {first_id}"
