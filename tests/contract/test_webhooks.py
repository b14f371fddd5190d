"""Webhooks on every path: signed final responses, outages, restarts, bad configuration."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
from standardwebhooks import Webhook

from tests.clients import chat_body, stream, wait_for
from tests.servers import Server
from tests.webhooks.receiver import SECRET, Receiver


def hook_env(receiver: Receiver) -> dict[str, str]:
    """Settings that post every finished stream to ``receiver`` (loopback allowlisted)."""
    return {"STREAMBRIDGE_WEBHOOK_URLS": receiver.url, "STREAMBRIDGE_WEBHOOK_SECRET": SECRET,
            "STREAMBRIDGE_WEBHOOK_ALLOW": "127.0.0.0/8", "STREAMBRIDGE_WEBHOOK_BACKOFF": "0.1",
            "STREAMBRIDGE_WEBHOOK_BACKOFF_MAX": "0.3", "STREAMBRIDGE_WEBHOOK_MAX_ATTEMPTS": "200",
            "STREAMBRIDGE_WEBHOOK_TIMEOUT": "2"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1."""
    r = Receiver()
    yield r
    r.stop()


def outbox(db: str) -> list[tuple[str, str]]:
    """(id, status) of every delivery in a server's SQLite file."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT id, status FROM webhook_outbox").fetchall()
    finally:
        conn.close()


def test_a_finished_stream_is_posted_signed(path_id: str, receiver: Receiver) -> None:
    """The final response arrives once, signed per Standard Webhooks, webhook-id set."""
    srv = Server(path_id, hook_env(receiver))
    try:
        r = stream(srv.url("/v1/chat"), chat_body("demo"))
        receiver.wait(lambda rc: len(rc.requests) >= 1)
    finally:
        srv.stop()
    assert not srv.problems()
    (request,) = receiver.requests
    event = Webhook(SECRET).verify(request["body"], request["headers"])
    assert request["headers"]["webhook-id"].startswith("msg_")
    assert event["type"] == "turn.completed"
    data = event["data"]
    assert data["text"] == r.text() and data["stream_id"] == r.headers["x-stream-id"]
    assert data["conversation_id"] == r.headers["x-conversation-id"]


def test_receiver_down_for_a_while_then_back(path_id: str, receiver: Receiver) -> None:
    """Every delivery arrives once the receiver is back; duplicates carry the same id."""
    receiver.stop()
    srv = Server(path_id, hook_env(receiver))
    try:
        sent = {stream(srv.url("/v1/chat"), chat_body("demo")).headers["x-stream-id"]
                for _ in range(3)}
        wait_for(lambda: len(outbox(srv.db_path)) == 3, timeout=10)
        receiver.start()
        receiver.wait(lambda rc: len(set(rc.ids())) >= 3)
        wait_for(lambda: {s for _, s in outbox(srv.db_path)} == {"delivered"}, timeout=10)
    finally:
        srv.stop()
    by_id: dict[str, str] = {}
    for req in receiver.requests:
        assert by_id.setdefault(req["headers"]["webhook-id"], req["body"]) == req["body"]
    assert {p["data"]["stream_id"] for p in receiver.payloads()} == sent


def test_pending_webhooks_are_delivered_after_sigkill(path_id: str,
                                                      receiver: Receiver) -> None:
    """Deliveries committed before a SIGKILL are sent by the restarted server."""
    receiver.stop()
    first = Server(path_id, hook_env(receiver))
    stream(first.url("/v1/chat"), chat_body("demo"))
    wait_for(lambda: len(outbox(first.db_path)) == 1, timeout=10)
    first.kill()
    first.stop()
    receiver.start()
    second = Server(path_id, {**hook_env(receiver), "STREAMBRIDGE_DATABASE_PATH": first.db_path})
    try:
        receiver.wait(lambda rc: len(rc.requests) >= 1, timeout=20)
    finally:
        second.stop()
    assert [s for _, s in outbox(first.db_path)] == ["delivered"]


@pytest.mark.parametrize(("env", "words"), [
    ({"STREAMBRIDGE_WEBHOOK_URLS": "http://127.0.0.1:9/h",
      "STREAMBRIDGE_WEBHOOK_SECRET": SECRET}, "loopback"),
    ({"STREAMBRIDGE_WEBHOOK_URLS": "https://example.com/h"}, "STREAMBRIDGE_WEBHOOK_SECRET"),
])
def test_bad_webhook_configuration_is_refused_at_start_up(path_id: str, env: dict[str, str],
                                                          words: str) -> None:
    """The server does not start, and says why."""
    with pytest.raises(RuntimeError) as info:
        Server(path_id, env)
    assert words in str(info.value)
