"""The memory backend, in process: replay, follow, several readers, bounds, retention, leases."""

from __future__ import annotations

import asyncio

import pytest

from async_core.streamlog import (
    LogSettings,
    MemoryLog,
    Reset,
    StaleOwner,
    StreamClosed,
    StreamExists,
    StreamNotFound,
)
from tests.streamlog.helpers import collect, entries, texts

pytestmark = pytest.mark.anyio


async def test_replay_then_follow_until_the_terminal_entry() -> None:
    """A reader from the start gets what was appended before it came and what comes after."""
    log = MemoryLog()
    lease = await log.create("s1", tenant="t", conversation_id="c")
    ids = [log.append(lease, "delta", {"text": w}) for w in ("a", "b")]
    reader = asyncio.create_task(collect(log.read("s1", None)))
    await asyncio.sleep(0.01)
    log.append(lease, "delta", {"text": "c"})
    await log.finish(lease, "done", {"finish_reason": "stop"})
    got = await reader
    assert texts(got) == ["a", "b", "c", "done"]
    assert ids[0].position < ids[1].position
    # resume from the first id: the rest, no repeat
    assert texts(await collect(log.read("s1", ids[0]))) == ["b", "c", "done"]
    meta = await log.meta("s1")
    assert meta is not None and meta.status == "done" and meta.tenant == "t"


async def test_a_cursor_at_the_terminal_entry_reads_nothing_and_ends() -> None:
    """Resuming from a finished stream's last id ends at once (it waited forever)."""
    log = MemoryLog()
    lease = await log.create("s1", tenant="t", conversation_id="c")
    log.append(lease, "delta", {"text": "a"})
    last = await log.finish(lease, "done", {"finish_reason": "stop"})
    async with asyncio.timeout(1):
        assert await collect(log.read("s1", last)) == []


async def test_several_readers_follow_one_stream() -> None:
    """Three live readers of one stream each get every entry in order."""
    log = MemoryLog()
    lease = await log.create("s", tenant="t", conversation_id="c")
    readers = [asyncio.create_task(collect(log.read("s", None))) for _ in range(3)]
    for i in range(50):
        log.append(lease, "delta", {"text": str(i)})
        if i % 7 == 0:
            await asyncio.sleep(0)
    await log.finish(lease, "done", {})
    want = [str(i) for i in range(50)] + ["done"]
    assert [texts(await r) for r in readers] == [want] * 3


async def test_bounded_buffer_resets_cursors_it_can_no_longer_serve() -> None:
    """Beyond maxlen the oldest entries go; a cursor before them gets Reset, never a gap."""
    log = MemoryLog(LogSettings(log_maxlen=5))
    lease = await log.create("s", tenant="t", conversation_id="c")
    first = log.append(lease, "delta", {"text": "0"})
    for i in range(1, 10):
        log.append(lease, "delta", {"text": str(i)})
    await log.finish(lease, "done", {})
    got = await collect(log.read("s", first))
    assert isinstance(got[0], Reset) and got[0].reason == "trimmed"
    assert texts(got) == ["RESET", "6", "7", "8", "9", "done"]
    kept = entries(got)[0].id  # a cursor at a kept entry needs no reset
    assert texts(await collect(log.read("s", kept))) == ["7", "8", "9", "done"]


async def test_foreign_epoch_resets_and_unknown_or_foreign_tenant_is_404() -> None:
    """A cursor of an older epoch is a Reset; another tenant and an unknown id are not found."""
    log = MemoryLog()
    old = await log.create("s", tenant="t", conversation_id="c")
    eid = log.append(old, "delta", {"text": "x"})
    await log.finish(old, "done", {})
    other = MemoryLog()  # a different epoch for the same stream id
    lease = await other.create("s", tenant="t", conversation_id="c")
    await other.finish(lease, "done", {})
    got = await collect(other.read("s", eid))
    assert isinstance(got[0], Reset) and got[0].reason == "epoch"
    with pytest.raises(StreamNotFound):
        await collect(log.read("s", None, tenant="intruder"))
    with pytest.raises(StreamNotFound):
        await collect(log.read("nope", None))


async def test_kept_for_the_retention_period_then_gone() -> None:
    """After the terminal entry the stream replays for `log_retention`, then is not found."""
    log = MemoryLog(LogSettings(log_retention=0.2))
    lease = await log.create("s", tenant="t", conversation_id="c")
    await log.finish(lease, "done", {})
    assert texts(await collect(log.read("s", None))) == ["done"]
    await asyncio.sleep(0.3)
    assert await log.meta("s") is None
    with pytest.raises(StreamNotFound):
        await collect(log.read("s", None))


async def test_no_second_generation_and_no_append_after_the_end() -> None:
    """Creating an existing stream is refused; so is appending after the terminal entry."""
    log = MemoryLog()
    lease = await log.create("s", tenant="t", conversation_id="c")
    with pytest.raises(StreamExists):
        await log.create("s", tenant="t", conversation_id="c")
    await log.finish(lease, "done", {})
    with pytest.raises((StreamClosed, StaleOwner)):
        log.append(lease, "delta", {"text": "late"})


async def test_expired_lease_is_fenced_and_swept_exactly_once() -> None:
    """A lease not renewed expires: the sweeper ends the stream once, the stale owner is refused."""
    log = MemoryLog(LogSettings(lease_ttl=0.1, lease_renew=0.05))
    lease = await log.create("s", tenant="t", conversation_id="c")
    log.append(lease, "delta", {"text": "a"})
    assert await log.renew(lease)
    reader = asyncio.create_task(collect(log.read("s", None)))
    await asyncio.sleep(0.15)
    assert await log.sweep() == ["s"]
    assert await log.sweep() == []
    got = await reader
    assert texts(got) == ["a", "error"]
    assert entries(got)[-1].data["code"] == "interrupted" and entries(got)[-1].data["retryable"]
    with pytest.raises(StaleOwner):
        log.append(lease, "delta", {"text": "zombie"})
    assert not await log.renew(lease) and lease.lost


async def test_cancel_intent_is_idempotent_and_wakes_the_owner() -> None:
    """The first cancel records the intent and sets the owner's event; repeats change nothing."""
    log = MemoryLog()
    lease = await log.create("s", tenant="t", conversation_id="c")
    first = await log.request_cancel("s")
    again = await log.request_cancel("s")
    assert first.recorded and not again.recorded and lease.cancelled.is_set()
    await log.finish(lease, "error", {"code": "cancelled"})
    ended = await log.request_cancel("s")
    assert ended.status == "error" and not ended.recorded
    with pytest.raises(StreamNotFound):
        await log.request_cancel("nope")
