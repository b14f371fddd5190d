"""The transcript writer meets rows it cannot write, on SQLite and a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiosqlite
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from async_core.store import Snapshot, Store, TranscriptWriter, create_engine, upgrade

pytestmark = pytest.mark.anyio
TRIGGERS = {
    "sqlite": ["CREATE TRIGGER refuse_poison BEFORE INSERT ON turns WHEN NEW.content LIKE "
               "'%POISON%' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"],
    "postgresql": [
        "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN IF NEW.content LIKE "
        "'%POISON%' THEN RAISE EXCEPTION 'poisoned row'; END IF; RETURN NEW; END $$ "
        "LANGUAGE plpgsql",
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON turns FOR EACH ROW EXECUTE FUNCTION "
        "refuse_poison()"],
}


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """A migrated store that refuses any turn containing ``POISON``."""
    engine = create_engine(db_url)
    await upgrade(engine)
    async with engine.begin() as conn:
        for ddl in TRIGGERS[engine.dialect.name]:
            await conn.execute(text(ddl))
    yield Store(engine)
    await engine.dispose()


def final(sid: str, text_: str, tenant: str = "t1") -> Snapshot:
    """The final transcript of stream ``sid`` in conversation ``c-<sid>``."""
    return Snapshot(stream_id=sid, conversation_id=f"c-{sid}", tenant=tenant, agent="demo",
                    messages=({"role": "user", "content": "hi"},), text=text_,
                    tokens=1, outcome="completed")


def dead_letters() -> float:
    """Snapshots dead-lettered so far in this process."""
    return REGISTRY.get_sample_value("streambridge_transcripts_dead_lettered_total",
                                     {"kind": "final"}) or 0.0


async def test_a_refused_row_is_isolated_then_dead_lettered(store: Store) -> None:
    """One refused snapshot in a batch of 16: the 15 others are committed, it is tried
    three times, dead-lettered once, and flush returns."""
    before = dead_letters()
    writer = TranscriptWriter(store)
    writer.start()
    try:
        for i in range(16):
            writer.submit(final(f"s{i}", "POISON" if i == 7 else f"text {i}"))
        assert await writer.flush(within=10)
    finally:
        await writer.aclose()
    for i in range(16):
        found = await store.history(f"c-s{i}", "t1")
        if i == 7:
            assert found is None or not [t for t in found if t["role"] == "assistant"]
        else:
            assert found is not None and found[-1]["content"] == f"text {i}"
    assert dead_letters() == before + 1


async def test_a_lone_surrogate_is_stored_as_a_replacement_character(store: Store) -> None:
    """Text no UTF-8 codec can encode is stored with U+FFFD in place of each surrogate."""
    await store.write([final("u1", "a\ud800b\udfff")])
    found = await store.history("c-u1", "t1")
    assert found is not None and found[-1]["content"] == "a\ufffdb\ufffd"


async def test_claims_of_one_pass_share_one_owner(store: Store) -> None:
    """Two tenants claiming one new id at the same moment: the first wins, for both."""
    writer = TranscriptWriter(store)
    writer.start()
    try:
        owners = await asyncio.gather(writer.claim("shared", "t1"), writer.claim("shared", "t2"),
                                      writer.claim("other", "t2"))
    finally:
        await writer.aclose()
    assert owners == ["t1", "t1", "t2"]


def test_aiosqlite_still_runs_a_function_in_its_thread() -> None:
    """_sqlite_batch relies on aiosqlite.Connection._execute (pinned here)."""
    assert callable(getattr(aiosqlite.Connection, "_execute", None))
