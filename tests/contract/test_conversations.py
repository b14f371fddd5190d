"""Conversations and transcripts, on every path: stored, continued, checkpointed, 404s."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.clients import RawStream, stream, wait_for
from tests.reaper import REAPER
from tests.servers import Server
from tests.store.agents import MARK, seen

AGENTS = {"STREAMBRIDGE_AGENTS": "tests.probe_agents:AGENTS,tests.store.agents:AGENTS"}


def body(message: str = "hello", **options: Any) -> dict[str, Any]:
    """A native chat body for the ``history`` agent."""
    return {"message": message, "agent": "history", "options": options}


def conversation(srv: Server, cid: str) -> httpx.Response:
    """GET the stored conversation ``cid``."""
    return httpx.get(srv.url(f"/v1/conversations/{cid}"), timeout=10)


def header(raw: bytes, name: str) -> str:
    """A response header from raw bytes (gunicorn and uvicorn spell names differently)."""
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.decode("latin-1").partition(":")
        if key.strip().lower() == name:
            return value.strip()
    raise KeyError(name)


def assistant(srv: Server, cid: str, final: bool = True) -> dict[str, Any]:
    """The last assistant turn of ``cid`` (waiting until it has its final outcome)."""
    def ready() -> dict[str, Any] | None:
        r = conversation(srv, cid)
        if r.status_code != 200:
            return None
        turns = [t for t in r.json()["turns"] if t["role"] == "assistant"]
        if turns and (not final or turns[-1]["outcome"] != "in_progress"):
            return turns[-1]  # type: ignore[no-any-return]
        return None
    return wait_for(ready, timeout=10)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def srv(path_id: str) -> Iterator[Server]:
    """One server per path with the history agent."""
    server = Server(path_id, AGENTS)
    yield server
    REAPER.retire(server, __name__)  # waited for, and its log read, at the module's end


def test_a_finished_turn_is_stored_with_its_outcome(srv: Server) -> None:
    """The user turn and the whole assistant reply are stored, marked completed."""
    r = stream(srv.url("/v1/chat"), body("first"))
    cid = r.headers["x-conversation-id"]
    reply = assistant(srv, cid)
    turns = conversation(srv, cid).json()["turns"]
    assert [(t["role"], t["content"]) for t in turns] == [("user", "first"),
                                                          ("assistant", r.text())]
    assert reply["outcome"] == "completed" and turns[0]["outcome"] == "completed"
    assert reply["stream_id"] == r.headers["x-stream-id"]


def test_a_conversation_id_passes_earlier_turns_to_the_agent(srv: Server) -> None:
    """X-Conversation-Id (or conversation_id) continues: the agent gets the earlier turns."""
    first = stream(srv.url("/v1/chat"), body("one"))
    cid = first.headers["x-conversation-id"]
    assistant(srv, cid)
    second = stream(srv.url("/v1/chat"), body("two"), headers={"X-Conversation-Id": cid})
    assert second.headers["x-conversation-id"] == cid
    assert seen(second.text()) == [["user", "one"], ["assistant", first.text()],
                                   ["user", "two"]]
    assistant(srv, cid)
    third = stream(srv.url("/v1/chat"), {**body("three"), "conversation_id": cid})
    assert [m[1] for m in seen(third.text())] == ["one", first.text(), "two",
                                                  second.text(), "three"]


def test_unknown_conversation_is_404(srv: Server) -> None:
    """GET of a conversation that was never stored answers the contract's JSON 404."""
    r = conversation(srv, "never-stored-1")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_a_client_id_starts_a_conversation_under_that_id(srv: Server) -> None:
    """A client-chosen id that does not exist yet starts a conversation with that id."""
    stream(srv.url("/v1/chat"), {**body("mine"), "conversation_id": "client-chosen-7"})
    assert assistant(srv, "client-chosen-7")["outcome"] == "completed"


def test_a_client_that_leaves_leaves_an_interrupted_partial_turn(srv: Server) -> None:
    """Client disconnect mid-stream: the partial text is stored as interrupted."""
    raw = RawStream(srv.port, "/v1/chat", body("leave", tokens=2000, interval_ms=5))
    head = raw.read_until(b"t3 ")
    cid = header(head, "x-conversation-id")
    raw.close()
    reply = assistant(srv, cid)
    assert reply["outcome"] == "interrupted"
    assert reply["reason"] == "client_disconnected"
    assert MARK in reply["content"] and "t3 " in reply["content"]
    assert "t1999 " not in reply["content"]


def test_an_agent_failure_is_stored_as_failed(srv: Server) -> None:
    """An agent that raises mid-stream: its partial text is stored as failed."""
    r = stream(srv.url("/v1/chat"), body("fail", tokens=10, fail_after=5))
    reply = assistant(srv, r.headers["x-conversation-id"])
    assert reply["outcome"] == "failed" and reply["reason"] == "agent_error"
    assert reply["content"] == r.text() and reply["content"].endswith("t2 ")


def test_sigkill_keeps_the_last_checkpoint_and_the_database_intact(path_id: str) -> None:
    """SIGKILL mid-stream: the transcript survives up to its last checkpoint; restart marks it."""
    first = Server(path_id, {**AGENTS, "STREAMBRIDGE_CHECKPOINT_INTERVAL": "0.1",
                             "STREAMBRIDGE_CHECKPOINT_TOKENS": "1000"})
    db = first.db_path
    raw = RawStream(first.port, "/v1/chat", body("kill", tokens=5000, interval_ms=10))
    seen_bytes = raw.read_until(b"t60 ", timeout=20)
    first.kill()
    first.stop()
    received = len(re.findall(rb"t\d+ ", seen_bytes))  # tokens the client read
    raw.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        row = conn.execute("SELECT content, outcome FROM turns WHERE role='assistant'"
                           ).fetchone()
    conn.close()
    content, outcome = row
    assert outcome == "in_progress"
    # At most ~0.1 s (10 tokens at 10 ms) behind what the client had; allow CPU noise.
    # It may be ahead: the server went on writing while the client read and killed it.
    tokens = re.findall(r"t\d+ ", content)
    kept = len(tokens)
    assert kept >= 40 and kept >= received - 20, (kept, received)
    assert tokens == [f"t{i} " for i in range(kept)], tokens[:5]  # a whole prefix, in order
    second = Server(path_id, {**AGENTS, "STREAMBRIDGE_DATABASE_PATH": db})
    try:
        cid = header(seen_bytes, "x-conversation-id")
        reply = assistant(second, cid)
        assert reply["outcome"] == "interrupted" and reply["reason"] == "crashed"
        assert reply["content"] == content
    finally:
        second.stop()
    assert not second.problems(), "\n".join(second.problems())
