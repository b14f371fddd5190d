"""The store on SQLite and on a real PostgreSQL: migrations, transcripts, outbox, leases."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from async_core.store import (
    IN_PROGRESS,
    Snapshot,
    Store,
    TranscriptWriter,
    create_engine,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """A migrated store on each database."""
    engine = create_engine(db_url)
    await upgrade(engine)
    yield Store(engine)
    await engine.dispose()


def snap(sid: str = "s1", cid: str = "c1", text_: str = "", outcome: str = IN_PROGRESS,
         tenant: str = "t1", **kw: object) -> Snapshot:
    """A snapshot of stream ``sid`` in conversation ``cid``."""
    return Snapshot(stream_id=sid, conversation_id=cid, tenant=tenant, agent="demo",
                    messages=({"role": "user", "content": "hi"},), text=text_,
                    tokens=len(text_), outcome=outcome, writer="host:1", **kw)  # type: ignore[arg-type]


def delivery(msg_id: str, url: str = "http://127.0.0.1:9/hook", **kw: object) -> dict[str, object]:
    """An outbox row due now."""
    now = time.time()
    return {"id": msg_id, "url": url, "event_type": "turn.completed", "payload": "{}",
            "status": "pending", "attempts": 0, "next_attempt_at": now, "lease_until": None,
            "last_error": None, "created_at": now, "finished_at": None, **kw}


def test_the_head_this_code_knows_is_alembics_head() -> None:
    """head_revision() (a constant, so start-up needs no Alembic) is the migrations' head."""
    from alembic.script import ScriptDirectory

    from async_core.store._migrate import alembic_config

    assert head_revision() == ScriptDirectory.from_config(alembic_config()).get_current_head()


async def test_current_revision_reads_what_alembic_reads(db_url: str) -> None:
    """Our version-table read agrees with Alembic's MigrationContext at base and head."""
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(db_url)
    try:
        for step in (None, "head"):
            if step:
                await upgrade(engine, step)
            async with engine.connect() as conn:
                theirs = await conn.run_sync(
                    lambda c: MigrationContext.configure(c).get_current_revision())
            assert await current_revision(engine) == theirs
        assert theirs == head_revision()
    finally:
        await engine.dispose()


def test_a_server_start_on_a_current_database_does_not_import_alembic(tmp_path: object) -> None:
    """Start-up on a database at head reads its revision and leaves Alembic unimported."""
    db = f"{tmp_path}/s.sqlite3"
    code = (
        "import asyncio, sys\n"
        "from async_core.store import create_engine, ensure_current, upgrade\n"
        "async def main(first):\n"
        "    e = create_engine(f'sqlite+aiosqlite:///{sys.argv[1]}')\n"
        "    await (upgrade(e) if first else ensure_current(e, auto=True))\n"
        "    await e.dispose()\n"
        "asyncio.run(main(sys.argv[2] == 'first'))\n"
        "print('alembic' in sys.modules)\n")
    out = [subprocess.run([sys.executable, "-c", code, db, step], capture_output=True,
                          text=True, check=True).stdout.strip() for step in ("first", "again")]
    assert out == ["True", "False"]


async def test_migrations_are_idempotent_and_reversible(db_url: str) -> None:
    """upgrade twice is a no-op; downgrade to base and up again works."""
    engine = create_engine(db_url)
    try:
        assert await current_revision(engine) is None
        await upgrade(engine)
        await upgrade(engine)
        assert await current_revision(engine) == head_revision()
        await downgrade(engine, "base")
        assert await current_revision(engine) is None
        await upgrade(engine)
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()


async def test_checkpoints_then_final_transcript(store: Store) -> None:
    """Checkpoints update the assistant turn; the final one fixes outcome and text."""
    await store.write([snap(text_="ab")])
    await store.write([snap(text_="abcd")])
    turns = await store.history("c1", "t1")
    assert turns is not None
    assert [(t["role"], t["content"], t["outcome"]) for t in turns] == [
        ("user", "hi", IN_PROGRESS), ("assistant", "abcd", IN_PROGRESS)]
    await store.write([snap(text_="abcdef", outcome="completed")])
    await store.write([snap(text_="late", outcome=IN_PROGRESS)])  # a stale checkpoint
    turns = await store.history("c1", "t1")
    assert turns is not None and turns[1]["content"] == "abcdef"
    assert {t["outcome"] for t in turns} == {"completed"}


async def test_conversations_are_invisible_to_other_tenants(store: Store) -> None:
    """Another tenant's conversation reads as unknown; a claim keeps its first owner."""
    assert await store.claim_many({"c9": "t1"}) == {"c9": "t1"}
    await store.write([snap(cid="c9", outcome="completed", text_="x")])
    assert await store.history("c9", "t2") is None
    assert await store.claim_many({"c9": "t2", "c10": "t2"}) == {"c9": "t1", "c10": "t2"}
    history = await store.history("c9", "t1")
    assert history is not None and len(history) == 2


async def test_transcript_and_outbox_commit_together(store: Store) -> None:
    """A batch whose outbox row is invalid rolls back its transcript too (one transaction)."""
    bad = delivery("m-bad")
    bad["payload"] = None  # NOT NULL
    with pytest.raises(Exception):  # noqa: B017,PT011 - each driver raises its own error
        await store.write([snap(sid="s2", cid="c2", outcome="completed", text_="x",
                                deliveries=(bad,))])
    assert await store.history("c2", "t1") is None
    assert await store.deliveries() == []
    await store.write([snap(sid="s2", cid="c2", outcome="completed", text_="x",
                            deliveries=(delivery("m-good"),))])
    assert [d["id"] for d in await store.deliveries()] == ["m-good"]


async def test_leases_prevent_double_claims_and_expire(store: Store) -> None:
    """Concurrent claimers split the due rows; an expired lease is claimed again."""
    rows = tuple(delivery(f"m{i}") for i in range(10))
    await store.write([snap(sid="s3", cid="c3", outcome="completed", deliveries=rows)])
    now = time.time()
    a, b = await asyncio.gather(store.claim_due(now, 30), store.claim_due(now, 30))
    ids_a, ids_b = {r["id"] for r in a}, {r["id"] for r in b}
    assert not ids_a & ids_b and len(ids_a | ids_b) == 10
    assert await store.claim_due(now, 30) == []
    assert len(await store.claim_due(now + 31, 30)) == 10


async def test_disabling_an_endpoint_stops_its_deliveries(store: Store) -> None:
    """410 Gone: pending rows of the endpoint stop, and new ones are not enqueued."""
    url = "http://127.0.0.1:9/gone"
    await store.write([snap(sid="s4", cid="c4", outcome="completed",
                            deliveries=(delivery("g1", url),))])
    await store.disable_endpoint(url, "410 Gone")
    await store.write([snap(sid="s5", cid="c4", outcome="completed",
                            deliveries=(delivery("g2", url),))])
    assert [(d["id"], d["status"]) for d in await store.deliveries()] == [("g1", "disabled")]
    assert await store.register_endpoints([url]) == {url}


async def test_checkpoints_of_dead_writers_are_marked_interrupted(store: Store) -> None:
    """At start-up, in-progress turns written by a dead process become interrupted."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    live = dataclasses.replace(snap(sid="s6", cid="c6", text_="a"),
                               writer=f"host:{os.getppid()}")
    gone = dataclasses.replace(snap(sid="s7", cid="c7", text_="b"), writer=f"host:{dead}")
    await store.write([live, gone])
    assert await store.recover("host") == 2  # the user and assistant rows of s7
    assert await store.recover("other-host") == 0
    kept = await store.history("c6", "t1")
    assert kept is not None and kept[1]["outcome"] == IN_PROGRESS
    turns = await store.history("c7", "t1")
    assert turns is not None and turns[1]["outcome"] == "interrupted"


async def test_the_writer_coalesces_and_flushes(store: Store) -> None:
    """Many checkpoints of one stream become one row; flush waits for the commit."""
    writer = TranscriptWriter(store)
    writer.start()
    for i in range(100):
        writer.submit(snap(sid="s8", cid="c8", text_="x" * i))
    writer.submit(snap(sid="s8", cid="c8", text_="final", outcome="completed"))
    writer.submit(snap(sid="s8", cid="c8", text_="stale"))
    assert writer.pending_for("c8")
    assert await writer.flush(within=10)
    assert not writer.pending_for("c8")
    turns = await store.history("c8", "t1")
    assert turns is not None and turns[1]["content"] == "final"
    await writer.aclose()


async def test_later_checkpoints_rewrite_the_answer_and_the_final_settles_every_row(
        store: Store) -> None:
    """A checkpoint after the first updates the answer's text; the final sets each outcome."""
    writer = TranscriptWriter(store)
    writer.start()
    for text_ in ("ab", "abcd"):
        writer.submit(snap(sid="s9", cid="c9", text_=text_))
        assert await writer.flush(within=10)
    turns = await store.history("c9", "t1")
    assert turns is not None and [t["outcome"] for t in turns] == [IN_PROGRESS] * 2
    assert (turns[1]["content"], turns[1]["tokens"]) == ("abcd", 4)
    writer.submit(snap(sid="s9", cid="c9", text_="abcdef", outcome="completed"))
    writer.submit(snap(sid="s9", cid="c9", text_="late"))  # a checkpoint after the end
    assert await writer.flush(within=10)
    turns = await store.history("c9", "t1")
    assert turns is not None and [t["outcome"] for t in turns] == ["completed"] * 2
    assert [t["content"] for t in turns] == ["hi", "abcdef"]
    await writer.aclose()


async def test_checkpoints_of_one_tick_share_a_commit_and_flush_skips_the_tick(
        store: Store) -> None:
    """After a commit, checkpoints wait for the tick, unless someone flushes."""
    writer = TranscriptWriter(store, tick=30.0)
    writer.start()
    writer.submit(snap(sid="s10", cid="c10", text_="a"))
    assert await writer.flush(within=10)  # the first commit is at once
    writer.submit(snap(sid="s11", cid="c11", text_="b"))
    writer.submit(snap(sid="s12", cid="c12", text_="c"))
    await asyncio.sleep(0.3)
    assert writer.pending_for("c11") and writer.pending_for("c12")  # waiting for the tick
    started = time.monotonic()
    assert await writer.flush(within=10)
    assert time.monotonic() - started < 5  # not the 30 s tick
    for cid, text_ in (("c11", "b"), ("c12", "c")):
        turns = await store.history(cid, "t1")
        assert turns is not None and turns[1]["content"] == text_
    await writer.aclose()


async def test_sqlite_runs_in_wal_mode(tmp_path: object) -> None:
    """The embedded default is a WAL-mode SQLite file with a busy timeout."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/wal.sqlite3")
    try:
        async with engine.connect() as conn:
            assert (await conn.scalar(text("PRAGMA journal_mode"))) == "wal"
            assert (await conn.scalar(text("PRAGMA busy_timeout"))) >= 1000
    finally:
        await engine.dispose()
