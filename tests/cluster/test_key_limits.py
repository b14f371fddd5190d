"""Per-key limits across the cluster (issue 14 item 1): one key's slot counts everywhere.

Two servers of different paths share one Redis; ``KEY_MAX_STREAMS=1``: a key streaming
on one server is refused on the other (per-process limits would admit it there), while
another tenant's key still streams.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator

import httpx
import pytest

from tests.clients import wait_for
from tests.cluster.test_slot_leases import HOLD, live_slots
from tests.contract.test_auth import ACME, GLOBEX, KEYS, bearer
from tests.servers import Server
from tests.streamlog.conftest import RedisServer


@pytest.fixture(scope="module")
def keyed() -> Iterator[tuple[list[Server], RedisServer]]:
    """An async and a legacy-gevent server with two tenants' keys, one stream per key."""
    redis = RedisServer()
    env = {"STREAMBRIDGE_REDIS_URL": redis.url, "STREAMBRIDGE_API_KEYS": KEYS,
           "STREAMBRIDGE_KEY_MAX_STREAMS": "1"}
    servers = [Server("async", env), Server("legacy-gevent", env)]
    yield servers, redis
    for srv in servers:
        srv.stop()
        assert srv.problems() == []
    redis.close()


async def _second_stream_of_a_key(servers: list[Server]) -> list[tuple[int, str]]:
    async with httpx.AsyncClient(timeout=20) as c:

        async def open_(srv: Server, key: str) -> httpx.Response:
            request = c.build_request("POST", srv.url("/v1/chat"), json=HOLD,
                                      headers=bearer(key))
            return await c.send(request, stream=True)

        first = await open_(servers[0], ACME)
        other = [await open_(servers[1], ACME), await open_(servers[1], GLOBEX)]
        out = []
        for r in [first, *other]:
            code = ""
            if r.status_code != 200:
                await r.aread()
                code = r.json()["error"]["code"]
            await r.aclose()
            out.append((r.status_code, code))
        return out


def test_a_keys_stream_on_one_server_counts_on_the_other(
        keyed: tuple[list[Server], RedisServer]) -> None:
    """acme streams on async: acme is refused on legacy-gevent, globex is not."""
    servers, redis = keyed
    assert asyncio.run(_second_stream_of_a_key(servers)) == [
        (200, ""), (503, "overloaded"), (200, "")]
    scopes = [f"key:{hashlib.sha256(key.encode()).hexdigest()[:12]}" for key in (ACME, GLOBEX)]
    wait_for(lambda: all(live_slots(redis, scope) == 0 for scope in scopes))
