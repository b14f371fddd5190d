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


@pytest.fixture(scope="module")
def hooked(path_id: str) -> Iterator[tuple[Server, Receiver]]:
    """One server per path posting to one receiver (each test waits for its own rows)."""
    rec = Receiver()
    srv = Server(path_id, hook_env(rec))
    yield srv, rec
    srv.stop()
    rec.stop()
    assert not srv.problems(), "\n".join(srv.problems())


def outbox(db: str) -> list[tuple[str, str]]:
    """(id, status) of every delivery in a server's SQLite file."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT id, status FROM webhook_outbox").fetchall()
    finally:
        conn.close()


def test_a_finished_stream_is_posted_signed(hooked: tuple[Server, Receiver]) -> None:
    """The final response arrives signed per Standard Webhooks, with its webhook-id."""
    srv, receiver = hooked
    r = stream(srv.url("/v1/chat"), chat_body("demo"))
    sid = r.headers["x-stream-id"]
    receiver.wait(lambda rc: any(p["data"]["stream_id"] == sid for p in rc.payloads()))
    (request,) = [q for q in receiver.requests if sid in q["body"]]
    event = Webhook(SECRET).verify(request["body"], request["headers"])
    assert request["headers"]["webhook-id"].startswith("msg_")
    assert event["type"] == "turn.completed"
    data = event["data"]
    assert data["text"] == r.text() and data["stream_id"] == sid
    assert data["conversation_id"] == r.headers["x-conversation-id"]


def test_receiver_down_for_a_while_then_back(hooked: tuple[Server, Receiver]) -> None:
    """Every delivery arrives once the receiver is back; duplicates carry the same id."""
    srv, receiver = hooked
    before = len(outbox(srv.db_path))
    receiver.stop()
    sent = {stream(srv.url("/v1/chat"), chat_body("demo")).headers["x-stream-id"]
            for _ in range(3)}
    wait_for(lambda: len(outbox(srv.db_path)) == before + 3, timeout=10)
    receiver.start()
    wait_for(lambda: {s for _, s in outbox(srv.db_path)} == {"delivered"}, timeout=15)
    by_id: dict[str, str] = {}
    for req in receiver.requests:
        assert by_id.setdefault(req["headers"]["webhook-id"], req["body"]) == req["body"]
    assert sent <= {p["data"]["stream_id"] for p in receiver.payloads()}


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
