"""The Redis backend against a real redis-server: each RedisLog plays one process."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis

from async_core import Settings
from async_core.streamlog import (
    LogSettings,
    LogUnavailable,
    RedisLog,
    Reset,
    StaleOwner,
    StreamExists,
    StreamNotFound,
    open_log,
)
from tests.streamlog.conftest import RedisServer
from tests.streamlog.helpers import collect, entries, texts

pytestmark = pytest.mark.anyio
FAST = {"redis_block": 0.5, "redis_socket_timeout": 2.0, "redis_retry": 0.05}


@pytest.fixture(params=["one-call-per-flush", "one-call-per-stream"])
async def make_log(redis_url: str, request: pytest.FixtureRequest
                   ) -> AsyncIterator[Callable[..., Any]]:
    """Open RedisLogs (one per simulated process) on the shared server; close them after.

    Every test runs with both flush shapes: one APPEND_MANY a flush (a single Redis) and
    one APPEND a stream (what a Cluster gets)."""
    opened: list[RedisLog] = []

    async def make(url: str = redis_url, **kw: Any) -> RedisLog:
        opts = {k: kw.pop(k) for k in ("owner", "sweeper", "heartbeat") if k in kw}
        log = await RedisLog.open(LogSettings(redis_url=url, **{**FAST, **kw}), **opts)
        log.one_call_per_flush = request.param == "one-call-per-flush"
        opened.append(log)
        return log

    yield make
    for log in opened:
        await log.aclose()


def stat(url: str, command: str) -> int:
    """Calls of one command so far (INFO commandstats)."""
    info = redis.Redis.from_url(url).info("commandstats")
    return int(info.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_replay_then_follow_from_another_process(make_log: Any) -> None:
    """B replays what A appended before it came, follows the rest live, and resumes by id."""
    a, b = await make_log(), await make_log()
    lease = await a.create("s1", tenant="t", conversation_id="c")
    for w in ("a", "b"):
        a.append(lease, "delta", {"text": w})
    await asyncio.sleep(0.05)
    reader = asyncio.create_task(collect(b.read("s1", None, tenant="t")))
    await asyncio.sleep(0.05)
    for w in ("c", "d"):
        a.append(lease, "delta", {"text": w})
        await asyncio.sleep(0.01)
    await a.finish(lease, "done", {"finish_reason": "stop"})
    got = await reader
    assert texts(got) == ["a", "b", "c", "d", "done"]
    second = entries(got)[1].id
    assert texts(await collect(b.read("s1", second))) == ["c", "d", "done"]
    meta = await b.meta("s1")
    assert meta is not None and meta.status == "done" and meta.conversation_id == "c"
    with pytest.raises(StreamNotFound):
        await collect(b.read("s1", None, tenant="intruder"))
    with pytest.raises(StreamExists):
        await b.create("s1", tenant="t", conversation_id="c")


async def test_two_reader_processes_on_one_stream(make_log: Any) -> None:
    """Readers in two other processes, joining at different times, get the same whole stream."""
    a, b, c = await make_log(), await make_log(), await make_log()
    lease = await a.create("s", tenant="t", conversation_id="c")
    early = asyncio.create_task(collect(b.read("s", None)))
    late: asyncio.Task[Any] | None = None
    for i in range(60):
        a.append(lease, "delta", {"text": str(i)})
        await asyncio.sleep(0.002)
        if i == 30:
            late = asyncio.create_task(collect(c.read("s", None)))
    await a.finish(lease, "done", {})
    assert late is not None
    want = [str(i) for i in range(60)] + ["done"]
    assert texts(await early) == want and texts(await late) == want


async def test_appends_are_coalesced_one_round_trip_per_batch(make_log: Any,
                                                              redis_url: str) -> None:
    """1,000 appends in one loop pass cost one EVALSHA; paced ones at most one a batch."""
    a = await make_log(heartbeat=False)
    lease = await a.create("s", tenant="t", conversation_id="c")
    before, flushes = stat(redis_url, "evalsha"), a.flushes
    for i in range(1000):
        a.append(lease, "delta", {"text": str(i)})
    await a.finish(lease, "done", {})
    assert stat(redis_url, "evalsha") - before == 1 and a.flushes - flushes == 1
    lease = await a.create("p", tenant="t", conversation_id="c")
    before, flushes = stat(redis_url, "evalsha"), a.flushes
    for i in range(200):
        a.append(lease, "delta", {"text": str(i)})
        if i % 4 == 0:
            await asyncio.sleep(0.001)
    await a.finish(lease, "done", {})
    calls = stat(redis_url, "evalsha") - before
    assert calls == a.flushes - flushes and calls <= 51
    got = await collect((await make_log()).read("p", None))
    assert texts(got) == [str(i) for i in range(200)] + ["done"]
    # ten streams appended in one loop pass: one pipeline; one EVALSHA on a single Redis
    leases = [await a.create(f"m{i}", tenant="t", conversation_id="c") for i in range(10)]
    before, flushes = stat(redis_url, "evalsha"), a.flushes
    for lease in leases:
        for i in range(20):
            a.append(lease, "delta", {"text": str(i)})
    await asyncio.sleep(0.2)
    assert a.flushes - flushes == 1
    assert stat(redis_url, "evalsha") - before == (1 if a.one_call_per_flush else 10)
    await asyncio.gather(*(a.finish(lease, "done", {}) for lease in leases))
    assert texts(await collect(a.read("m3", None)))[-2:] == ["19", "done"]


async def test_hundred_live_readers_cost_one_blocking_connection(make_log: Any,
                                                                 redis_url: str) -> None:
    """100 readers of 100 streams in one process share one XREAD connection (CLIENT LIST).

    The others are the bounded command pool (4) that their replays used."""
    a, b = await make_log(), await make_log(owner="readers")
    leases = [await a.create(f"s{i}", tenant="t", conversation_id="c") for i in range(100)]
    readers = [asyncio.create_task(collect(b.read(f"s{i}", None))) for i in range(100)]
    await asyncio.sleep(0.3)
    for lease in leases:
        a.append(lease, "delta", {"text": "x"})
    await asyncio.sleep(0.2)
    clients = redis.Redis.from_url(redis_url).client_list()
    names = [c["name"] for c in clients if c["name"].startswith("sb-readers")]
    assert names.count("sb-readers-reader") == 1 and len(names) <= 1 + 4, names
    await asyncio.gather(*(a.finish(lease, "done", {}) for lease in leases))
    assert all(texts(r) == ["x", "done"] for r in await asyncio.gather(*readers))


async def test_trimmed_log_resets_an_old_cursor(make_log: Any) -> None:
    """XADD MAXLEN ~ drops old entries; a cursor before them gets Reset('trimmed')."""
    a, b = await make_log(log_maxlen=10), await make_log()
    lease = await a.create("s", tenant="t", conversation_id="c")
    first = a.append(lease, "delta", {"text": "0"})
    for i in range(1, 500):
        a.append(lease, "delta", {"text": str(i)})
        if i % 50 == 0:
            await asyncio.sleep(0.01)
    await a.finish(lease, "done", {})
    for cursor in (first, None):
        got = await collect(b.read("s", cursor))
        assert isinstance(got[0], Reset) and got[0].reason == "trimmed"
        assert texts(got)[-2:] == ["499", "done"] and len(got) < 400
    kept = entries(got)[-3].id
    assert texts(await collect(b.read("s", kept))) == ["499", "done"]


async def test_stream_expires_a_retention_period_after_its_end(make_log: Any,
                                                               redis_url: str) -> None:
    """Every key of a stream gets the retention TTL at its terminal entry, then is gone."""
    a = await make_log(log_retention=0.5)
    lease = await a.create("s", tenant="t", conversation_id="c")
    a.append(lease, "delta", {"text": "x"})
    await a.finish(lease, "done", {})
    r = redis.Redis.from_url(redis_url)
    assert 0 < r.pttl("sb:{s}:log") <= 500 and 0 < r.pttl("sb:{s}:meta") <= 500
    assert r.exists("sb:{s}:owner") == 0
    await asyncio.sleep(0.7)
    assert await a.meta("s") is None and r.exists("sb:{s}:log") == 0
    with pytest.raises(StreamNotFound):
        await collect(a.read("s", None))


async def test_fenced_lease_refuses_a_stale_owner(make_log: Any, redis_url: str) -> None:
    """Once another owner holds the lease, the old owner's appends are refused atomically."""
    a = await make_log()
    lease = await a.create("s", tenant="t", conversation_id="c")
    a.append(lease, "delta", {"text": "mine"})
    await asyncio.sleep(0.05)
    redis.Redis.from_url(redis_url).set("sb:{s}:owner", "usurper:2", px=10_000)
    a.append(lease, "delta", {"text": "stale"})
    with pytest.raises(StaleOwner):
        await asyncio.wait_for(a.finish(lease, "done", {}), 5)
    assert lease.lost and lease.cancelled.is_set()
    log = redis.Redis.from_url(redis_url).xrange("sb:{s}:log")
    assert [f for _, f in log] == [{b"delta": b'{"text":"mine"}'}]


async def test_sweeper_ends_an_expired_stream_exactly_once(make_log: Any) -> None:
    """A frozen owner's lease expires; of two racing sweepers one appends `interrupted`."""
    a = await make_log(heartbeat=False, lease_ttl=0.3, lease_renew=0.1)
    b, c = await make_log(sweeper=False), await make_log(sweeper=False)
    lease = await a.create("s", tenant="t", conversation_id="c")
    a.append(lease, "delta", {"text": "partial"})
    reader = asyncio.create_task(collect(b.read("s", None)))
    await asyncio.sleep(0.1)
    assert await b.sweep() == []  # the lease is still alive
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    swept = await asyncio.gather(b.sweep(), c.sweep())
    assert sorted(swept, key=len) == [[], ["s"]]
    got = await reader
    assert time.monotonic() - t0 < 1.0
    assert texts(got) == ["partial", "error"]
    assert entries(got)[-1].data == {"code": "interrupted", "retryable": True,
                                     "message": "the stream's owner stopped (lease expired)"}
    assert await b.sweep() == []
    with pytest.raises(StaleOwner):
        await asyncio.wait_for(a.finish(lease, "done", {}), 5)


async def test_cancel_intent_reaches_the_owner_within_a_second(make_log: Any) -> None:
    """A cancel recorded from another process wakes the owner's lease; repeats are no-ops."""
    a, b = await make_log(), await make_log()
    lease = await a.create("s", tenant="t", conversation_id="c")
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    first = await b.request_cancel("s")
    await asyncio.wait_for(lease.cancelled.wait(), 1.0)
    elapsed = time.monotonic() - t0
    again = await b.request_cancel("s")
    assert first.recorded and not again.recorded and elapsed < 1.0
    meta = await b.meta("s")
    assert meta is not None and meta.cancel_requested
    await a.finish(lease, "error", {"code": "cancelled"})
    ended = await b.request_cancel("s")
    assert ended.status == "error" and not ended.recorded
    with pytest.raises(StreamNotFound):
        await b.request_cancel("nope")


async def test_unreachable_redis_at_start_names_the_setting() -> None:
    """Opening the log on a closed port fails with one line naming STREAMBRIDGE_REDIS_URL."""
    from async_core.harness import free_port as _free_port

    with pytest.raises(LogUnavailable) as info:
        await open_log(LogSettings(redis_url=f"redis://127.0.0.1:{_free_port()}/0", **FAST))
    assert "STREAMBRIDGE_REDIS_URL=redis://127.0.0.1:" in str(info.value)
    assert "\n" not in str(info.value)


async def test_redis_restarted_mid_stream(make_log: Any, make_redis: Callable[[], RedisServer],
                                          caplog: pytest.LogCaptureFixture) -> None:
    """Across a Redis restart: local readers miss nothing, remote readers reset explicitly,
    appends after the restart land, and the outage is logged once each way in each process
    (connections from before it that fail after another saw the recovery used to log and
    count a second, sometimes a third)."""
    from async_core.streamlog._health import REDIS_OUTAGES

    srv = make_redis()
    a, b = await make_log(srv.url), await make_log(srv.url)
    lease = await a.create("s", tenant="t", conversation_id="c")
    local = asyncio.create_task(collect(a.read("s", None), timeout=30))
    remote = asyncio.create_task(collect(b.read("s", None), timeout=30))
    outages = REDIS_OUTAGES._value.get()
    caplog.set_level(logging.INFO, logger="streambridge.streamlog")
    for i in range(100):
        a.append(lease, "delta", {"text": str(i)})
        await asyncio.sleep(0.005)
        if i == 40:
            await asyncio.to_thread(srv.restart)
    await asyncio.wait_for(a.finish(lease, "done", {}), 10)
    want = [str(i) for i in range(100)] + ["done"]
    local_items = await local
    assert texts(local_items) == want
    before = entries(local_items)[10].id  # a cursor minted before the restart
    resumed = await collect(b.read("s", before))
    assert isinstance(resumed[0], Reset) and resumed[0].reason == "epoch"
    assert texts(resumed)[-2:] == ["99", "done"]
    got = texts(await remote)
    assert got[-1] == "done"
    if "RESET" in got:  # the reader saw the loss: after the reset, the recreated log
        after = got[got.index("RESET") + 1:]
        assert after == want[want.index(after[0]):]
    else:
        assert got == want
    meta = await b.meta("s")
    assert meta is not None and meta.status == "done"
    fresh = texts(await collect(b.read("s", None)))
    assert fresh[0] == "RESET" and fresh[-2:] == ["99", "done"]
    lines = [r.getMessage() for r in caplog.records]  # one outage each of the two processes
    assert sum("degraded" in m for m in lines) == 2, lines
    assert sum("recovered" in m for m in lines) == 2, lines
    assert REDIS_OUTAGES._value.get() == outages + 2
    assert a.health.outages == b.health.outages == 1


async def test_reader_that_loses_its_connection_resumes_from_its_last_id(
        make_log: Any, redis_url: str) -> None:
    """Killing the reader's blocking connection mid-stream loses and repeats nothing."""
    a, b = await make_log(), await make_log(owner="victim")
    lease = await a.create("s", tenant="t", conversation_id="c")
    reader = asyncio.create_task(collect(b.read("s", None)))
    r = redis.Redis.from_url(redis_url)
    for i in range(60):
        a.append(lease, "delta", {"text": str(i)})
        await asyncio.sleep(0.003)
        if i == 30:
            (victim,) = [c for c in r.client_list() if c["name"] == "sb-victim-reader"]
            r.client_kill_filter(_id=victim["id"])
    await a.finish(lease, "done", {})
    assert texts(await reader) == [str(i) for i in range(60)] + ["done"]
    assert b.mux.reads > 2


async def test_a_retried_batch_is_written_once(make_log: Any, redis_url: str) -> None:
    """APPEND skips ids it already has, so a batch retried after a lost reply is not doubled."""
    a = await make_log(heartbeat=False)
    lease = await a.create("s", tenant="t", conversation_id="c")
    keys = ("sb:{s}:log", "sb:{s}:meta", "sb:{s}:owner", "sb:{s}:ctl")
    batch = '[["1-1","delta","{\\"text\\":\\"a\\"}"],["1-2","delta","{\\"text\\":\\"b\\"}"]]'
    args = [lease.fence, "e2", "t", "c", 100, 60_000, 10_000, "", "0"]
    for _ in range(2):
        res = await a.eval_script("APPEND", keys, *args, batch)
        assert res[0] == b"ok"
    assert redis.Redis.from_url(redis_url).xlen("sb:{s}:log") == 2


async def test_a_batch_after_a_gap_is_refused_whole(make_log: Any, redis_url: str) -> None:
    """APPEND refuses a batch whose first new id does not follow the stream's last one
    (a batch sent after one that failed), writing nothing; the resend in order lands."""
    a = await make_log(heartbeat=False)
    lease = await a.create("s", tenant="t", conversation_id="c")
    keys = ("sb:{s}:log", "sb:{s}:meta", "sb:{s}:owner", "sb:{s}:ctl")
    args = [lease.fence, "e2", "t", "c", 100, 60_000, 10_000, "", "0"]

    def batch(*seqs: int) -> str:
        return json.dumps([[f"1-{n}", "delta", json.dumps({"text": str(n)})] for n in seqs])

    assert (await a.eval_script("APPEND", keys, *args, batch(3, 4)))[0] == b"gap"
    assert (await a.eval_script("APPEND", keys, *args, batch(1, 2)))[0] == b"ok"
    assert (await a.eval_script("APPEND", keys, *args, batch(4)))[0] == b"gap"
    assert (await a.eval_script("APPEND", keys, *args, batch(2, 3, 4)))[0] == b"ok"
    log = redis.Redis.from_url(redis_url).xrange("sb:{s}:log")
    assert [i for i, _ in log] == [b"1-1", b"1-2", b"1-3", b"1-4"]


async def test_a_lost_log_is_recreated_only_from_the_oldest_unstored_entry(
        make_log: Any, redis_url: str) -> None:
    """Redis lost the log (FLUSHALL here): a batch that does not start at the owner's
    oldest unstored entry (sent while an earlier one was in flight, and that one failed
    with NOSCRIPT) is refused, not taken as a new log's start (a silent gap: it was);
    the resend from the oldest recreates it."""
    a = await make_log(heartbeat=False)
    lease = await a.create("s", tenant="t", conversation_id="c")
    r = redis.Redis.from_url(redis_url)
    r.flushall()
    keys = ("sb:{s}:log", "sb:{s}:meta", "sb:{s}:owner", "sb:{s}:ctl")
    args = [lease.fence, "e2", "t", "c", 100, 60_000, 10_000, "", "0"]

    def batch(*seqs: int) -> str:
        return json.dumps([[f"1-{n}", "delta", json.dumps({"text": str(n)})] for n in seqs])

    assert (await a.eval_script("APPEND", keys, *args, batch(3, 4), "1-2"))[0] == b"gap"
    assert not r.exists("sb:{s}:meta") and not r.exists("sb:{s}:log")
    assert (await a.eval_script("APPEND", keys, *args, batch(2, 3, 4), "1-2"))[0] == b"ok"
    assert [i for i, _ in r.xrange("sb:{s}:log")] == [b"1-2", b"1-3", b"1-4"]


def stored(url: str, stream_id: str) -> list[str]:
    """The texts of a stream's log as Redis holds it (duplicates and gaps would show)."""
    out = []
    for _, fields in redis.Redis.from_url(url).xrange(f"sb:{{{stream_id}}}:log"):
        ((event, data),) = fields.items()
        out.append(json.loads(data).get("text", event.decode()))
    return out


async def test_several_batches_in_flight_keep_order_through_failures(
        make_log: Any, redis_url: str) -> None:
    """The writer sends batches before the previous reply (several in flight); a killed
    writer connection and a flushed script cache mid-stream (batches in the window fail,
    later ones are refused or fail too) lose nothing and repeat nothing, stream by stream."""
    a = await make_log(heartbeat=False)
    r = redis.Redis.from_url(redis_url)
    ids = [f"w{i}" for i in range(20)]
    leases = [await a.create(sid, tenant="t", conversation_id="c") for sid in ids]
    kills = 0
    for n in range(150):
        for lease in leases:
            a.append(lease, "delta", {"text": str(n)})
        await asyncio.sleep(0.002 if n % 10 == 0 else 0)
        if n in (40, 100):  # kill the writer's connection with batches in flight
            for c in r.client_list():
                if c["name"] == f"sb-{a.owner}-writer":
                    kills += r.client_kill_filter(_id=c["id"])
        if n == 70:
            r.script_flush()
    await asyncio.wait_for(asyncio.gather(*(a.finish(x, "done", {}) for x in leases)), 10)
    assert a.peak_in_flight >= 2 and kills >= 1
    want = [str(n) for n in range(150)] + ["done"]
    for sid in ids:
        assert stored(redis_url, sid) == want
    assert texts(await collect((await make_log()).read("w7", None))) == want


async def test_a_recorded_intent_reaches_the_owner_through_renewal(make_log: Any,
                                                                    redis_url: str) -> None:
    """If the wake-up is lost, the owner's next renewal still reports the durable intent."""
    a = await make_log(heartbeat=False)
    lease = await a.create("s", tenant="t", conversation_id="c")
    redis.Redis.from_url(redis_url).hset("sb:{s}:meta", "cancel", "1")  # no ctl entry
    await asyncio.sleep(0.1)
    assert not lease.cancelled.is_set()
    assert await a.renew(lease) and lease.cancelled.is_set() and not lease.lost


def test_settings_from_env_and_their_checks() -> None:
    """Variables parse by type; a socket timeout not above the block time is refused by name."""
    s = Settings.from_env({"STREAMBRIDGE_REDIS_URL": "redis://h:1/0",
                           "STREAMBRIDGE_LOG_MAXLEN": "42", "STREAMBRIDGE_LEASE_TTL": "2.5",
                           "STREAMBRIDGE_LEASE_RENEW": "1"}).log
    assert (s.redis_url, s.log_maxlen, s.lease_ttl) == ("redis://h:1/0", 42, 2.5)
    with pytest.raises(ValueError, match="STREAMBRIDGE_LOG_MAXLEN='x' is not a valid int"):
        Settings.from_env({"STREAMBRIDGE_LOG_MAXLEN": "x"})
    with pytest.raises(ValueError, match="STREAMBRIDGE_REDIS_SOCKET_TIMEOUT must exceed"):
        LogSettings(redis_block=10, redis_socket_timeout=5)


async def test_an_idle_process_recovers_from_an_outage_its_sweeper_saw(
        make_log: Any, make_redis: Callable[[], RedisServer]) -> None:
    """A process with no streams, degraded by a failed sweep, recovers on the next one."""
    srv = make_redis()
    log = await make_log(srv.url, lease_ttl=1.0, lease_renew=0.1, sweep_interval=0.1)
    await asyncio.to_thread(srv.stop)
    await _until(lambda: log.health.degraded, "the failed sweep never degraded it")
    await asyncio.to_thread(srv.start)
    await _until(lambda: not log.health.degraded, "a successful sweep did not recover it")


async def _until(predicate: Callable[[], bool], message: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.02)


async def test_a_burst_during_a_flush_is_written_whole(make_log: Any) -> None:
    """`redis_max_buffered` counts what waits, not what is in flight: 21 entries with a
    cap of 20, five of them in a flush, are all written in order (the cap used to drop
    an entry of the flush in flight, then delete one never sent: a silent gap)."""
    a, b = await make_log(redis_max_buffered=20), await make_log()
    lease = await a.create("burst", tenant="t", conversation_id="c")
    for i in range(5):
        a.append(lease, "delta", {"text": str(i)})
    await asyncio.sleep(0)  # the writer sends these five; the rest come while in flight
    for i in range(5, 20):
        a.append(lease, "delta", {"text": str(i)})
    await asyncio.wait_for(a.finish(lease, "done", {}), 10)
    assert texts(await collect(b.read("burst", None))) == [str(i) for i in range(20)] + ["done"]


async def test_entries_dropped_past_the_buffer_reset_every_reader(make_log: Any,
                                                                  redis_url: str) -> None:
    """Past `redis_max_buffered` entries waiting for Redis (paused here: it keeps its
    data), the oldest are dropped: a fresh reader, and one with a cursor from before,
    get a reset (`trimmed`, `epoch`), then every entry after it: never a silent gap."""
    a, b = await make_log(redis_max_buffered=10), await make_log()
    lease = await a.create("drop", tenant="t", conversation_id="c")
    cursor = a.append(lease, "delta", {"text": "0"})
    for i in range(1, 3):
        a.append(lease, "delta", {"text": str(i)})
    await asyncio.sleep(0.2)  # stored
    redis.Redis.from_url(redis_url).client_pause(400)
    for i in range(3, 40):
        a.append(lease, "delta", {"text": str(i)})
        await asyncio.sleep(0.005)
    await asyncio.wait_for(a.finish(lease, "done", {}), 10)
    for start, reason in ((None, "trimmed"), (cursor, "epoch")):
        items = await collect(b.read("drop", start))
        assert isinstance(items[0], Reset) and items[0].reason == reason, items[:2]
        got = texts(items)[1:]
        assert got[-1] == "done" and got[:-1] == [str(i) for i in range(int(got[0]), 40)], got


async def test_the_heartbeat_renews_every_lease_in_one_round_trip(make_log: Any,
                                                                 redis_url: str) -> None:
    """Three streams outlive their lease TTL three times over (nobody sweeps them), with
    one ZADD a heartbeat for all of them, not one a stream."""
    a = await make_log(lease_ttl=0.3, lease_renew=0.05, sweeper=False)
    sweeper = await make_log(sweep_interval=0.05)
    leases = [await a.create(f"hb{i}", tenant="t", conversation_id="c") for i in range(3)]
    zadds = stat(redis_url, "zadd")
    await asyncio.sleep(1.0)
    beats = stat(redis_url, "zadd") - zadds
    assert await sweeper.sweep() == []
    for lease in leases:
        meta = await sweeper.meta(lease.stream_id)
        assert meta is not None and meta.status == "running" and not lease.lost
    assert 3 <= beats <= 21, beats  # ~20 heartbeats of 50 ms at most, one ZADD each
    for lease in leases:
        await a.finish(lease, "done", {})


async def test_a_live_reader_resets_when_the_log_starts_anew(make_log: Any,
                                                            redis_url: str) -> None:
    """A reader following live while the owner drops entries past `redis_max_buffered`
    (Redis paused, every connection kept: no reconnection tells it) gets a reset, then
    every entry after it in order: the new epoch's ids follow the old ones, so the
    multiplexer's XREAD used to hand them over as if nothing was missing."""
    a, b = await make_log(redis_max_buffered=10), await make_log()
    lease = await a.create("anew", tenant="t", conversation_id="c")
    for i in range(3):
        a.append(lease, "delta", {"text": str(i)})
    reader = asyncio.create_task(collect(b.read("anew", None)))
    await _until(lambda: bool(b.mux.follows), "the reader never followed live")
    await asyncio.sleep(0.2)  # the three are stored and read
    redis.Redis.from_url(redis_url).client_pause(400)
    for i in range(3, 40):  # at once: 37 wait for the writer, past the cap of 10
        a.append(lease, "delta", {"text": str(i)})
    await asyncio.wait_for(a.finish(lease, "done", {}), 10)
    got = texts(await reader)
    assert got[:3] == ["0", "1", "2"] and "RESET" in got, " ".join(got)
    after = got[got.index("RESET") + 1:]
    assert after[-1] == "done" and after[:-1] == [str(i) for i in range(int(after[0]), 40)], got
    assert int(after[0]) > 3, got  # entries were dropped, so the reset was due


async def test_one_outage_is_one_degraded_line_and_one_recovered_line(
        make_log: Any, make_redis: Callable[[], RedisServer],
        caplog: pytest.LogCaptureFixture) -> None:
    """A Redis restart while the owner's writer is idle: its reader notices and
    recovers, then the writer's first batch goes out on a connection from before the
    restart. That failure belongs to the outage already logged (it used to count and log
    a second one): one degraded line, one recovered line, one count."""
    from async_core.streamlog._health import REDIS_OUTAGES

    srv = make_redis()
    a = await make_log(srv.url, redis_socket_timeout=5.0)  # no timeout on a loaded machine
    lease = await a.create("s", tenant="t", conversation_id="c")
    a.append(lease, "delta", {"text": "0"})
    await _until(lambda: a.flushes == 1 and a.in_flight == 0, "the first entry was not stored")
    outages = REDIS_OUTAGES._value.get()
    caplog.set_level(logging.INFO, logger="streambridge.streamlog")
    before = time.perf_counter()
    await asyncio.to_thread(srv.restart)
    await _until(lambda: a.health.recovered_at > before and not a.health.degraded,
                 "the reader did not see the restart and recover", timeout=15)
    for i in range(1, 5):
        a.append(lease, "delta", {"text": str(i)})
        await asyncio.sleep(0.01)
    await asyncio.wait_for(a.finish(lease, "done", {}), 10)
    b = await make_log(srv.url, redis_socket_timeout=5.0)
    assert texts(await collect(b.read("s", None)))[-6:] == ["RESET", "1", "2", "3", "4", "done"]
    lines = [r.getMessage() for r in caplog.records]
    assert sum("degraded" in m for m in lines) == 1, lines
    assert sum("recovered" in m for m in lines) == 1, lines
    assert REDIS_OUTAGES._value.get() == outages + 1
    assert a.health.outages == 1
