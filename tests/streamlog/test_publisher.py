"""The sync producer against a real redis-server; a RedisLog plays the server that reads.

The publisher runs in a plain thread (no event loop there), as in a Celery task.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis

from async_core import AgentFailure, AgentRequest
from async_core.streamlog import (
    LogSettings,
    PublishedStream,
    Publisher,
    ReadItem,
    RedisLog,
    Reset,
    StaleOwner,
    StreamExists,
    publish_agent,
)
from tests.probe_agents import probe_sync, read_probe
from tests.streamlog.conftest import RedisServer
from tests.streamlog.helpers import collect, entries, texts

pytestmark = pytest.mark.anyio
FAST = {"redis_block": 0.5, "redis_socket_timeout": 2.0, "redis_retry": 0.05,
        "lease_ttl": 1.0, "lease_renew": 0.3, "sweep_interval": 0.2}


@pytest.fixture
def publisher(redis_url: str) -> Iterator[Publisher]:
    """A publisher on the shared server."""
    pub = Publisher(LogSettings(redis_url=redis_url, **FAST))
    yield pub
    pub.close()


@pytest.fixture
async def reader(redis_url: str) -> AsyncIterator[RedisLog]:
    """The reading (and sweeping) server process."""
    log = await RedisLog.open(LogSettings(redis_url=redis_url, **FAST))
    yield log
    await log.aclose()


async def _exists(log: RedisLog, stream_id: str) -> None:
    deadline = time.monotonic() + 10
    while await log.meta(stream_id) is None:
        assert time.monotonic() < deadline, f"{stream_id} was never created"
        await asyncio.sleep(0.01)


async def _refused(s: PublishedStream) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            s.delta("b ")
        except StaleOwner:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the lost lease was never noticed")


def _request(tokens: int, interval_ms: int, probe: Path | None = None) -> AgentRequest:
    options = {"tokens": tokens, "interval_ms": interval_ms,
               "probe_file": str(probe) if probe else None}
    return AgentRequest(messages=({"role": "user", "content": "hi"},), options=options,
                        conversation_id="conv-1")


async def test_stream_is_read_whole_in_order_with_one_round_trip_per_batch(
        publisher: Publisher, reader: RedisLog) -> None:
    """2,000 unpaced deltas arrive whole and in order; far fewer round trips than tokens."""
    def produce() -> None:
        with publisher.stream("p1", tenant="t", conversation_id="c") as s:
            for i in range(2000):
                s.delta(f"{i} ")
            s.state({"step": 1})

    before = publisher.round_trips
    await asyncio.to_thread(produce)
    got = await collect(reader.read("p1", None, tenant="t"))
    text = "".join(str(e.data["text"]) for e in entries(got) if e.event == "delta")
    assert text == "".join(f"{i} " for i in range(2000))
    assert [e.event for e in entries(got)][-2:] == ["state", "done"]
    done = entries(got)[-1].data
    assert done["tokens"] == 2000 and done["conversation_id"] == "c"
    trips = publisher.round_trips - before
    assert trips <= len(entries(got)) < 2000, trips  # a round trip per batch, not per token
    meta = await reader.meta("p1")
    assert meta is not None and meta.status == "done"
    assert not await reader.client.zscore("sb:running", "p1")
    with pytest.raises(StreamExists):
        publisher.stream("p1", tenant="t")


async def test_cancel_intent_stops_the_agent_and_its_finally_runs(
        publisher: Publisher, reader: RedisLog, tmp_path: Path) -> None:
    """A cancel recorded in the log closes the agent (finally ran) and ends it `cancelled`."""
    probe = tmp_path / "probe.jsonl"
    result: dict[str, str | None] = {}

    def run() -> None:
        s = publish_agent(publisher, probe_sync, _request(10_000, 5, probe),
                          stream_id="p2", tenant="t")
        result["outcome"] = s.outcome

    worker = threading.Thread(target=run)
    worker.start()
    await _exists(reader, "p2")
    items = reader.read("p2", None, tenant="t")
    first = await asyncio.wait_for(items.__anext__(), 5)
    assert first.event == "delta"  # type: ignore[union-attr]
    t0 = time.time()
    assert (await reader.request_cancel("p2")).recorded
    rest = await collect(items)
    await asyncio.to_thread(worker.join, 5)
    assert result["outcome"] == "cancelled"
    assert entries(rest)[-1].event == "error"
    assert entries(rest)[-1].data["code"] == "cancelled"
    (record,) = read_probe(str(probe))
    assert record["t"] - t0 < 1.0 and record["produced"] < 10_000


async def test_bad_items_fail_their_caller_and_the_stream_goes_on(
        publisher: Publisher, reader: RedisLog) -> None:
    """A state that is not JSON or a delta that is not text raises at once; nothing is lost."""
    def produce() -> None:
        with publisher.stream("p6", tenant="t") as s:
            s.delta("a ")
            with pytest.raises(TypeError):
                s.state({"when": object()})
            with pytest.raises(TypeError):
                s.delta(b"bytes")  # type: ignore[arg-type]
            s.delta("b ")

    await asyncio.to_thread(produce)
    got = texts(await collect(reader.read("p6", None)))
    assert "".join(got[:-1]) == "a b " and got[-1] == "done"  # (the deltas may coalesce)


async def test_exceptions_end_the_stream_with_error(publisher: Publisher,
                                                    reader: RedisLog) -> None:
    """An AgentFailure keeps its code and message; any other exception is agent_error."""
    def fail(exc: Exception) -> None:
        with publisher.stream(f"p3-{type(exc).__name__}", tenant="t") as s:
            s.delta("partial ")
            raise exc

    with pytest.raises(AgentFailure):
        await asyncio.to_thread(fail, AgentFailure("upstream says no", retryable=True))
    with pytest.raises(KeyError):
        await asyncio.to_thread(fail, KeyError("secret detail"))
    got = await collect(reader.read("p3-AgentFailure", None))
    assert texts(got) == ["partial ", "error"]
    assert entries(got)[-1].data == {"code": "agent_error", "message": "upstream says no",
                                     "retryable": True}
    err = entries(await collect(reader.read("p3-KeyError", None)))[-1].data
    assert err["code"] == "agent_error" and "secret" not in err["message"]


async def test_a_frozen_publisher_is_swept_and_fenced_off(redis_url: str,
                                                          reader: RedisLog) -> None:
    """Redis stops renewing a frozen producer: the sweeper ends it, its appends are refused."""
    pub = Publisher(LogSettings(redis_url=redis_url, **FAST))
    s = pub.stream("p4", tenant="t")
    s.delta("a ")
    items = reader.read("p4", None)
    assert (await asyncio.wait_for(items.__anext__(), 5)).event == "delta"  # type: ignore[union-attr]
    # Freeze: the owner key is deleted as if its TTL passed while the process was stopped.
    r = redis.Redis.from_url(redis_url)
    r.delete("sb:{p4}:owner")
    r.close()
    last = entries(await collect(items))[-1]
    assert last.event == "error" and last.data["code"] == "interrupted"
    await _refused(s)  # the next renewal or flush is refused
    with pytest.raises(StaleOwner), s:
        pass
    pub.close()
    assert texts(await collect(reader.read("p4", None))) == ["a ", "error"]


async def test_redis_restart_mid_stream_the_publisher_finishes(
        make_redis: Callable[[], RedisServer]) -> None:
    """Across a Redis restart the producer keeps its batch, recreates the log under a new
    epoch and ends it; a cursor minted before the restart gets an explicit reset."""
    srv = make_redis()
    pub = Publisher(LogSettings(redis_url=srv.url, **FAST))
    log = await RedisLog.open(LogSettings(redis_url=srv.url, **FAST))
    try:
        def produce() -> str | None:
            with pub.stream("p5", tenant="t") as s:
                for i in range(100):
                    s.delta(f"{i} ")
                    time.sleep(0.005)
                    if i == 40:
                        srv.restart()
            return s.outcome

        before = entries(await _first_entries(log, produce))
        assert before, "nothing was read before the restart"
        got = await collect(log.read("p5", before[-1].id))
        assert isinstance(got[0], Reset) and got[0].reason == "epoch"
        text = "".join(str(e.data["text"]) for e in entries(got) if e.event == "delta")
        assert text.endswith("99 ") and entries(got)[-1].event == "done"
        assert pub.health.degraded is False
    finally:
        await log.aclose()
        pub.close()


async def _first_entries(log: RedisLog, produce: Callable[[], str | None]) -> list[ReadItem]:
    """Run ``produce`` in a thread; return what was read of p5 before it ended."""
    task = asyncio.ensure_future(asyncio.to_thread(produce))
    await _exists(log, "p5")
    seen: list[ReadItem] = []
    async for item in log.read("p5", None):
        seen.append(item)
        if len(seen) == 10:
            break
    assert await task == "completed"
    return seen
