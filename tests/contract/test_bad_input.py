"""Bad input gets a 4xx with a JSON error naming the problem, never a 500."""

from __future__ import annotations

import httpx
import pytest

from tests.servers import Server

MSG = [{"role": "user", "content": "x"}]
CASES = [
    ("/v1/chat", b"{not json", {}, 400, "not valid JSON"),
    ("/v1/chat", b"[1, 2]", {}, 400, "JSON object"),
    ("/v1/chat", b'{"messages": []}', {}, 400, "messages must be a non-empty array"),
    ("/v1/chat", b'{"messages": [{"role": "robot", "content": "x"}]}', {}, 400, "role"),
    ("/v1/chat", b'{"messages": [{"role": "user", "content": 5}]}', {}, 400, "content"),
    ("/v1/chat", b'{"message": "x", "stream": "yes"}', {}, 400, "stream must be a boolean"),
    ("/v1/chat", b'{"message": "x", "agent": "nope"}', {}, 404, "unknown agent"),
    ("/v1/chat", b'{"message": "x", "options": {"tokens": -1}}', {}, 400, "options.tokens"),
    ("/v1/chat", b'{"message": "x", "options": {"tokenz": 1}}', {}, 400, "tokenz"),
    ("/v1/chat", b'{"message": "x", "options": [1]}', {}, 400, "options must be an object"),
    ("/v1/chat", b'{"message": "x", "conversation_id": "a b"}', {}, 400, "conversation_id"),
    ("/v1/chat", b'{"message": "x"}', {"accept": "image/png"}, 406, "Accept"),
    ("/v1/chat?format=xml", b'{"message": "x"}', {}, 406, "format"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}]}', {}, 400,
     "model"),
    ("/v1/chat/completions", b'{"model": "demo"}', {}, 400, "messages"),
    ("/api/generate", b'{"model": "demo"}', {}, 400, "prompt"),
    ("/api/chat", b'{"model": "ghost", "messages": [{"role": "user", "content": "x"}]}', {},
     404, "unknown agent"),
]


@pytest.mark.parametrize(("route", "body", "headers", "status", "words"), CASES,
                         ids=[f"{c[0]}-{c[3]}-{c[4][:18]}" for c in CASES])
def test_bad_request_is_a_json_4xx(server: Server, route: str, body: bytes,
                                   headers: dict[str, str], status: int, words: str) -> None:
    """Each malformed request gets its status and an error body naming the problem."""
    r = httpx.post(server.url(route), content=body,
                   headers={"content-type": "application/json", **headers}, timeout=10)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] and words in error["message"]


def test_oversized_body_is_413(server: Server) -> None:
    """A body over the limit is refused with 413 before it is parsed."""
    big = b'{"message": "' + b"x" * 1_100_000 + b'"}'
    r = httpx.post(server.url("/v1/chat"), content=big, timeout=10)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_unknown_route_and_wrong_method_are_json(server: Server) -> None:
    """404 and 405 are JSON errors too."""
    assert httpx.get(server.url("/nope"), timeout=5).json()["error"]["code"] == "not_found"
    r = httpx.get(server.url("/v1/chat"), timeout=5)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_health_ready_and_metrics(server: Server) -> None:
    """/healthz and /readyz answer 200; /metrics exposes the stream metrics."""
    assert httpx.get(server.url("/healthz"), timeout=5).status_code == 200
    assert httpx.get(server.url("/readyz"), timeout=5).json()["ready"] is True
    httpx.post(server.url("/v1/chat"), json={"message": "x", "stream": False}, timeout=10)
    text = httpx.get(server.url("/metrics"), timeout=5).text
    for name in ("streambridge_active_streams", "streambridge_streams_total",
                 "streambridge_time_to_first_chunk_seconds",
                 "streambridge_stream_duration_seconds", "streambridge_chunks_total"):
        assert name in text
