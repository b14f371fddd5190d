"""The cluster limits while Redis is down (issue 14 item 4): each mode as README says.

A private redis-server per test is stopped under a running server and started again
on the same port (its data lost): ``closed`` sheds every stream, ``open`` admits past
the limit, ``local`` enforces the limit divided by ``STREAMBRIDGE_LIMITS_WORKERS``; each
says so in one log line and ``streambridge_limits_degraded``, and recovers by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.clients import metric, wait_for
from tests.cluster.test_slot_leases import ENV, HOLD, live_slots
from tests.servers import Server
from tests.streamlog.conftest import RedisServer

LIMIT = 2


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private redis-server this test may stop and start."""
    srv = RedisServer()
    yield srv
    srv.close()


async def _statuses(srv: Server, n: int) -> list[tuple[int, str]]:
    """Open ``n`` holding streams at once; return (status, error code) of each, closed."""
    async with httpx.AsyncClient(timeout=20) as c:
        url = srv.url("/v1/chat")
        responses = await asyncio.gather(*(
            c.send(c.build_request("POST", url, json=HOLD), stream=True) for _ in range(n)))
        out = []
        for r in responses:
            code = ""
            if r.status_code != 200:
                await r.aread()
                code = r.json()["error"]["code"]
            await r.aclose()
            out.append((r.status_code, code))
        return sorted(out)


def _server(path_id: str, redis: RedisServer, mode: str) -> Server:
    return Server(path_id, {**ENV, "STREAMBRIDGE_REDIS_URL": redis.url,
                            "STREAMBRIDGE_MAX_STREAMS": str(LIMIT),
                            "STREAMBRIDGE_LIMITS_WORKERS": "2",
                            "STREAMBRIDGE_LIMITS_ON_REDIS_FAILURE": mode})


EXPECTED = {
    "closed": [(503, "limits_unavailable")] * 3,
    "open": [(200, "")] * 3,
    "local": [(200, ""), (503, "overloaded"), (503, "overloaded")],  # 2 / 2 workers = 1
}


@pytest.mark.parametrize(("mode", "path_id"), [
    ("closed", "async"), ("open", "async"), ("local", "legacy-gevent")])
def test_redis_down_then_back_under_each_failure_mode(
        mode: str, path_id: str, own_redis: RedisServer) -> None:
    """Redis stops: the mode's behaviour, one log line, the metric; it comes back: leases."""
    redis = own_redis
    srv = _server(path_id, redis, mode)
    try:
        assert asyncio.run(_statuses(srv, LIMIT + 1)) == [(200, "")] * LIMIT + [
            (503, "overloaded")]
        redis.stop()
        assert asyncio.run(_statuses(srv, 3)) == EXPECTED[mode]
        assert metric(srv.base_url, "streambridge_limits_degraded", mode=mode) == 1
        redis.start()
        wait_for(lambda: "cluster limits recovered" in srv.log(), timeout=5)
        assert metric(srv.base_url, "streambridge_limits_degraded", mode=mode) == 0
        assert asyncio.run(_statuses(srv, LIMIT + 1)) == [(200, "")] * LIMIT + [
            (503, "overloaded")]
    finally:
        srv.stop()
    log = srv.log()
    assert log.count("cluster limits degraded") == 1, log
    assert f"STREAMBRIDGE_LIMITS_ON_REDIS_FAILURE={mode}" in log
    assert log.count("cluster limits recovered") == 1
    assert srv.problems() == []


def test_leases_lost_with_a_redis_restart_are_renewed_back(
        own_redis: RedisServer) -> None:
    """Streams hold the limit; Redis restarts empty: the heartbeat re-creates their leases."""
    redis = own_redis
    srv = _server("async", redis, "closed")
    try:
        asyncio.run(_hold_through_restart(srv, redis))
        assert metric(srv.base_url, "streambridge_limit_lease_renewals_failed_total") >= 1
    finally:
        srv.stop()
    assert srv.problems() == []


async def _hold_through_restart(srv: Server, redis: RedisServer) -> None:
    async with httpx.AsyncClient(timeout=20) as c:
        url = srv.url("/v1/chat")
        held = await asyncio.gather(*(
            c.send(c.build_request("POST", url, json=HOLD), stream=True) for _ in range(LIMIT)))
        assert [r.status_code for r in held] == [200] * LIMIT
        await asyncio.to_thread(redis.stop)
        await asyncio.to_thread(wait_for, lambda: "cluster limits degraded" in srv.log())
        await asyncio.to_thread(redis.start)
        await asyncio.to_thread(wait_for, lambda: live_slots(redis) == LIMIT)
        extra = await c.post(url, json=HOLD)
        assert extra.status_code == 503
        assert extra.json()["error"]["code"] == "overloaded"
        for r in held:
            await r.aclose()
    wait_for(lambda: live_slots(redis) == 0)
