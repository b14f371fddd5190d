"""Cluster rate limits (issue 14 item 3): one GCRA cell in Redis shared by two servers.

``STREAMBRIDGE_RATE_LIMIT=0.5`` with a burst of 2 on two servers: a burst of 6 across
both admits exactly 2 (per-process limits would admit 4); every refusal is 429 with a
Retry-After that is right to the second: one sent before it ends is refused, one sent
after exactly that wait is admitted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.clients import chat_body
from tests.servers import Server
from tests.streamlog.conftest import RedisServer

QUICK = {**chat_body("probe", tokens=1, interval_ms=0), "stream": False}


@pytest.fixture(scope="module")
def rated() -> Iterator[list[Server]]:
    """Two async servers sharing one Redis and one rate of 0.5/s, burst 2."""
    redis = RedisServer()
    env = {"STREAMBRIDGE_REDIS_URL": redis.url, "STREAMBRIDGE_RATE_LIMIT": "0.5",
           "STREAMBRIDGE_RATE_BURST": "2"}
    servers = [Server("async", env), Server("async", env)]
    yield servers
    for srv in servers:
        srv.stop()
        assert srv.problems() == []
    redis.close()


async def _posts(urls: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=20) as c:
        return list(await asyncio.gather(*(c.post(url, json=QUICK) for url in urls)))


def test_a_burst_across_two_servers_gets_the_cluster_rate_and_exact_retry_after(
        rated: list[Server]) -> None:
    """6 at once over two servers: 2 pass, 4 get 429 Retry-After 2; waiting it is enough."""
    urls = [rated[i % 2].url("/v1/chat") for i in range(6)]
    started = time.monotonic()
    responses = asyncio.run(_posts(urls))
    assert sorted(r.status_code for r in responses) == [200, 200, 429, 429, 429, 429]
    limited = [r for r in responses if r.status_code == 429]
    assert all(r.json()["error"]["code"] == "rate_limited" for r in limited)
    assert {r.headers["retry-after"] for r in limited} == {"2"}
    # 0.5 s before the cell frees: refused, told to wait 1 s; after that wait: admitted.
    time.sleep(max(0.0, started + 1.5 - time.monotonic()))
    early = httpx.post(rated[1].url("/v1/chat"), json=QUICK, timeout=20)
    assert early.status_code == 429
    assert early.headers["retry-after"] == "1"
    time.sleep(int(early.headers["retry-after"]))
    assert httpx.post(rated[0].url("/v1/chat"), json=QUICK, timeout=20).status_code == 200
