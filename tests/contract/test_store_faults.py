"""The store under hostile input and load (issue 10): one bad row blocks no one, a new
conversation is its creator's from the first byte, and a burst neither fails nor lags."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.clients import RawStream, metric, stream, wait_for
from tests.contract.test_conversations import header
from tests.servers import Server, fresh_database
from tests.webhooks.receiver import SECRET, Receiver

AGENTS = "tests.probe_agents:AGENTS,tests.store.agents:AGENTS"
ACME, GLOBEX = "acme-key-0123456789abcdef", "globex-key-0123456789abcdef"
KEYS = f"acme:{ACME},globex:{GLOBEX}"
POISON = ("CREATE TRIGGER refuse_poison_{op} BEFORE {op} ON turns "
          "WHEN NEW.content LIKE '%POISON%' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END")


def auth(key: str) -> dict[str, str]:
    """The Authorization header of ``key``."""
    return {"Authorization": f"Bearer {key}"}


def env(receiver: Receiver | None = None, **extra: str) -> dict[str, str]:
    """Two tenants' keys, the test agents, and webhooks to ``receiver``."""
    out = {"STREAMBRIDGE_AGENTS": AGENTS, "STREAMBRIDGE_API_KEYS": KEYS, **extra}
    if receiver is not None:
        out.update({"STREAMBRIDGE_WEBHOOK_URLS": receiver.url,
                    "STREAMBRIDGE_WEBHOOK_SECRET": SECRET,
                    "STREAMBRIDGE_WEBHOOK_ALLOW": "127.0.0.0/8",
                    "STREAMBRIDGE_WEBHOOK_BACKOFF": "0.1",
                    "STREAMBRIDGE_WEBHOOK_BACKOFF_MAX": "0.3"})
    return out


def history_body(message: str, **options: Any) -> dict[str, Any]:
    """A chat body for the ``history`` agent."""
    return {"message": message, "agent": "history", "options": {"tokens": 3, **options}}


def final_turn(srv: Server, cid: str, key: str) -> dict[str, Any]:
    """The finished assistant turn of ``cid`` (GET must answer within 5 s each time)."""
    def ready() -> dict[str, Any] | None:
        r = httpx.get(srv.url(f"/v1/conversations/{cid}"), headers=auth(key), timeout=5)
        assert r.status_code in (200, 404), r.text
        turns = [t for t in r.json().get("turns", []) if t["role"] == "assistant"]
        return turns[-1] if turns and turns[-1]["outcome"] != "in_progress" else None
    return wait_for(ready, timeout=10)  # type: ignore[no-any-return]


def stored(db: str) -> dict[str, tuple[str, str]]:
    """stream id -> (assistant text, outcome) in a server's SQLite file."""
    conn = sqlite3.connect(db)
    try:
        return {sid: (content, outcome) for sid, content, outcome in conn.execute(
            "SELECT stream_id, content, outcome FROM turns WHERE role = 'assistant'")}
    finally:
        conn.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1."""
    r = Receiver()
    yield r
    r.stop()


def test_a_lone_surrogate_blocks_no_one(path_id: str, receiver: Receiver) -> None:
    """An agent's lone surrogate is stored as U+FFFD; every later transcript, webhook, GET
    and the SIGTERM flush go on for every tenant."""
    srv = Server(path_id, env(receiver))
    try:
        bad = stream(srv.url("/v1/chat"), {"message": "x", "agent": "probe-surrogate",
                                           "options": {"tokens": 5, "interval_ms": 0}},
                     headers=auth(ACME))
        assert bad.status == 200 and bad.kinds()[-1] == "done"
        later = [stream(srv.url("/v1/chat"), history_body(f"after {i}"), headers=auth(GLOBEX))
                 for i in range(3)]
        for r in later:
            turn = final_turn(srv, r.headers["x-conversation-id"], GLOBEX)
            assert turn["outcome"] == "completed" and turn["content"] == r.text()
        turn = final_turn(srv, bad.headers["x-conversation-id"], ACME)
        assert turn["content"] == "0 1\ufffd 2 3 4 "
        sent = {r.headers["x-stream-id"] for r in (bad, *later)}
        receiver.wait(lambda rc: sent <= {p["data"]["stream_id"] for p in rc.payloads()})
        last = [stream(srv.url("/v1/chat"), history_body(f"last {i}"), headers=auth(GLOBEX))
                for i in range(2)]
    finally:
        srv.stop()
    rows = stored(srv.db_path)
    for r in last:  # finished just before SIGTERM: flushed on the way out
        assert rows[r.headers["x-stream-id"]] == (r.text(), "completed")
    assert "could not be written" not in srv.log()
    assert not srv.problems(), "\n".join(srv.problems())


def test_a_refused_row_is_dead_lettered_and_the_rest_written(path_id: str,
                                                             receiver: Receiver) -> None:
    """A row the database refuses is retried, then dead-lettered with one log line and a
    metric; the other tenants' transcripts and webhooks go on, and SIGTERM loses nothing."""
    db = fresh_database()  # at the schema head, made by `streambridge db upgrade`
    conn = sqlite3.connect(db)
    for op in ("INSERT", "UPDATE"):
        conn.execute(POISON.format(op=op))
    conn.commit()
    conn.close()
    srv = Server(path_id, env(receiver, STREAMBRIDGE_DATABASE_PATH=db))
    try:
        bad = stream(srv.url("/v1/chat"), history_body("POISON"), headers=auth(ACME))
        good = [stream(srv.url("/v1/chat"), history_body(f"fine {i}"), headers=auth(GLOBEX))
                for i in range(2)]
        for r in good:
            turn = final_turn(srv, r.headers["x-conversation-id"], GLOBEX)
            assert turn["content"] == r.text()
        bad_sid = bad.headers["x-stream-id"]
        wait_for(lambda: f"dead letter: transcript of stream {bad_sid}" in srv.log())
        assert metric(srv.base_url, "streambridge_transcripts_dead_lettered_total",
                      kind="final") == 1
        sent = {r.headers["x-stream-id"] for r in good}
        receiver.wait(lambda rc: sent <= {p["data"]["stream_id"] for p in rc.payloads()})
        last = stream(srv.url("/v1/chat"), history_body("last"), headers=auth(GLOBEX))
    finally:
        srv.stop()
    rows = stored(srv.db_path)
    assert rows[last.headers["x-stream-id"]] == (last.text(), "completed")
    assert bad_sid not in rows
    letters = [line for line in srv.log().splitlines() if "dead letter:" in line]
    assert all(bad_sid in line for line in letters)  # nobody else's row
    assert len([line for line in letters if ", completed," in line]) == 1  # one line each
    assert "could not be written" not in srv.log()
    assert bad_sid not in {p["data"]["stream_id"] for p in receiver.payloads()}
    assert not srv.problems(), "\n".join(srv.problems())


def test_a_new_conversation_is_its_creators_from_the_first_byte(path_id: str) -> None:
    """Before any checkpoint, another tenant gets 404 for a new conversation's id, on this
    process and on another sharing the database; the creator keeps it."""
    quiet = env(STREAMBRIDGE_CHECKPOINT_INTERVAL="600", STREAMBRIDGE_CHECKPOINT_TOKENS="100000")
    a = Server(path_id, quiet)
    b = Server(path_id, {**quiet, "STREAMBRIDGE_DATABASE_PATH": a.db_path})
    try:
        chosen = f"chosen-{uuid.uuid4().hex[:8]}"
        made_up = RawStream(a.port, "/v1/chat", {"message": "mine", "agent": "probe",
                                                 "options": {"tokens": 2000, "interval_ms": 5}},
                            headers=auth(ACME))
        cid = header(made_up.read_until(b"event: delta"), "x-conversation-id")
        picked = RawStream(a.port, "/v1/chat", {"message": "mine", "agent": "probe",
                                                "conversation_id": chosen,
                                                "options": {"tokens": 2000, "interval_ms": 5}},
                           headers=auth(ACME))
        picked.read_until(b"event: delta")
        for conversation in (cid, chosen):
            for srv in (a, b):
                r = httpx.post(srv.url("/v1/chat"), json={
                    "message": "take", "agent": "probe", "conversation_id": conversation,
                    "options": {"tokens": 2}}, headers=auth(GLOBEX), timeout=10)
                assert r.status_code == 404, (conversation, srv.port, r.text)
                assert r.json()["error"]["code"] == "not_found"
            assert httpx.get(b.url(f"/v1/conversations/{conversation}"), headers=auth(ACME),
                             timeout=10).status_code == 200
        made_up.close()
        picked.close()
        for conversation in (cid, chosen):
            assert final_turn(a, conversation, ACME)["outcome"] == "interrupted"
            assert httpx.get(b.url(f"/v1/conversations/{conversation}"),
                             headers=auth(GLOBEX), timeout=10).status_code == 404
    finally:
        a.stop()
        b.stop()
    assert not a.problems() + b.problems(), "\n".join(a.problems() + b.problems())


# -- a burst of streams on the hybrid front (issue 10, item 9) ---------------------------

BURST = 200
INTERVAL = 0.01  # the probe's pace: 100 tokens/s
CHECKPOINT = 0.25  # the default checkpoint interval
# A stored transcript may be one checkpoint interval behind what its client saw, plus the
# writer's pass that commits it. With 200 streams opening at once on one worker the loop is
# saturated and that pass is slow: measured max 12-48 tokens on an idle machine, 100 once
# in a full CI run (against 1,376 before one thread hop per transaction). 1.25 s of slack
# keeps the test about what it guards (no lost conversation, no multi-second lag), not
# about the speed of a saturated loop.
BOUND_TOKENS = int((CHECKPOINT + 1.25) / INTERVAL)


async def _burst_client(port: int, i: int, seen: dict[int, bytes]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps({"message": f"burst {i}", "agent": "probe",
                          "options": {"tokens": 100_000, "interval_ms": INTERVAL * 1000}})
    writer.write(f"POST /v1/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                 f"application/json\r\nContent-Length: {len(payload)}\r\n\r\n{payload}".encode())
    seen[i] = b""
    try:
        while chunk := await reader.read(65536):
            seen[i] += chunk
    except OSError:
        pass
    finally:
        writer.close()


def _client_tokens(raw: bytes) -> int:
    tokens = 0
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            tokens = max(tokens, json.loads(line[6:]).get("tokens", 0))
    return tokens


async def _burst_then_kill(srv: Server) -> dict[int, bytes]:
    seen: dict[int, bytes] = {}
    tasks = [asyncio.create_task(_burst_client(srv.port, i, seen)) for i in range(BURST)]
    async with asyncio.timeout(60):
        while len(seen) < BURST or min(_client_tokens(v) for v in seen.values()) < 100:
            if any(t.done() for t in tasks):
                break  # a stream ended early: the assertions say which
            await asyncio.sleep(0.2)
    srv.kill()
    await asyncio.wait(tasks, timeout=10)
    return seen


@pytest.mark.parametrize("hybrid", ["hybrid-0", "hybrid-100"])
def test_a_burst_on_the_hybrid_front_neither_fails_nor_lags(hybrid: str) -> None:
    """200 streams opening at once all get 200; after SIGKILL every one is stored, within a
    checkpoint interval (plus one writer pass) of what its client saw."""
    srv = Server(hybrid, {"STREAMBRIDGE_MAX_STREAMS": "400"})
    try:
        seen = asyncio.run(_burst_then_kill(srv))
    finally:
        srv.stop()
    statuses = [raw.split(b"\r\n", 1)[0] for raw in seen.values()]
    assert statuses == [b"HTTP/1.1 200 OK"] * BURST, sorted(set(statuses))
    assert "database is locked" not in srv.log()
    rows = stored(srv.db_path)
    lags = []
    for raw in seen.values():
        sid = header(raw, "x-stream-id")
        assert sid in rows, f"stream {sid} lost"
        lags.append(_client_tokens(raw) - len(rows[sid][0].split()))
    lags.sort()
    print(f"{hybrid}: stored text behind the client, tokens p50 {lags[len(lags) // 2]} "
          f"p99 {lags[int(len(lags) * 0.99) - 1]} max {lags[-1]}")
    assert lags[-1] <= BOUND_TOKENS, lags[-20:]
