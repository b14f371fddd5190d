"""Cross-host transcript recovery (issue 13 item 5): one Redis, one shared database.

A (legacy-gevent, 2 workers) and B (async) are real ``streambridge serve`` processes on
one private redis-server and ONE SQLite file (``STREAMBRIDGE_DATABASE_PATH``), with short
leases. A is SIGKILLed while its streams run and have checkpointed: B's sweeper ends
them ``interrupted`` in the log, and B marks their transcripts ``interrupted`` from the
last checkpoint, while A stays dead (A's own store would only do it when it starts
again, which may be never).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.cluster.processes import FAST_LEASES
from tests.cluster.sse import sse
from tests.probe_agents import probe_text
from tests.servers import Server
from tests.streamlog.conftest import RedisServer

# lease TTL + sweep interval + one database write, with slack on a loaded machine
MARK_BOUND = 1.0 + 0.2 + 4.0


def _turns(db: str, stream_id: str) -> list[tuple[str, str, str, str | None]]:
    """(role, outcome, content, reason) of a stream's rows, straight from the file."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        return list(conn.execute(
            "SELECT role, outcome, content, reason FROM turns WHERE stream_id = ? "
            "ORDER BY position", (stream_id,)))
    finally:
        conn.close()


def _wait(what: str, check: object, timeout: float) -> float:
    """Poll ``check()`` until true; return how long it took (fail past ``timeout``)."""
    t0 = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - t0 < timeout, f"{what} not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - t0


def test_sigkill_of_a_b_marks_its_transcripts_interrupted(
        cluster_redis: RedisServer, tmp_path: Path) -> None:
    """A's checkpointed transcripts end `interrupted` on B, A's text kept, A never back."""
    db = str(tmp_path / "shared.sqlite3")
    env = {"STREAMBRIDGE_REDIS_URL": cluster_redis.url, **FAST_LEASES,
           "STREAMBRIDGE_DATABASE_PATH": db, "STREAMBRIDGE_CHECKPOINT_INTERVAL": "0.05",
           "STREAMBRIDGE_CHECKPOINT_TOKENS": "4"}
    b = Server("async", env)
    a = Server("legacy-gevent", env, ["--workers", "2"])
    try:
        firsts = [sse("POST", a.url("/v1/chat"), cut_after=1, body={
            "message": f"hi {i}", "agent": "probe", "on_disconnect": "continue",
            "options": {"tokens": 100_000, "interval_ms": 5}}) for i in range(3)]
        sids = [f.headers["x-stream-id"] for f in firsts]
        convs = [f.headers["x-conversation-id"] for f in firsts]

        def checkpointed() -> bool:
            return all(any(r[0] == "assistant" and r[1] == "in_progress" and r[2]
                           for r in _turns(db, sid)) for sid in sids)

        _wait("a checkpoint of every stream", checkpointed, 15)
        a.kill()
        killed_at = [_turns(db, sid)[-1][2] for sid in sids]  # nothing writes them now

        def marked() -> bool:
            return all(_turns(db, sid)[-1][1] == "interrupted" for sid in sids)

        took = _wait("B marking A's transcripts", marked, 15)
    finally:
        a.stop()
    try:
        for sid, conv, text in zip(sids, convs, killed_at, strict=True):
            rows = _turns(db, sid)
            assert [r[:2] for r in rows] == [("user", "interrupted"),
                                             ("assistant", "interrupted")], rows
            assert rows[-1][2] == text and rows[-1][3] == "crashed"
            assert probe_text(100_000).startswith(text) and text, text[:80]
            # B serves it: the reset client's reload source says what happened
            turns = httpx.get(b.url(f"/v1/conversations/{conv}"), timeout=10).json()["turns"]
            assert turns[-1]["outcome"] == "interrupted" and turns[-1]["content"] == text
        assert took < MARK_BOUND, took
        assert "marked the transcripts of" in b.log()
    finally:
        b.stop()
        assert not b.problems(), b.problems()


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
