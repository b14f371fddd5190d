"""ClusterAdmission in process against a real redis-server: the edges a server hides.

A request cancelled while Redis admits it must not strand the slot it was granted
(LiteLLM #28160); a release called twice frees once; the heartbeat keeps a long
stream's lease past the TTL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from async_core._cluster_admission import ClusterAdmission
from async_core._lifecycle import Lifecycle
from async_core._settings import Settings
from async_core.streamlog import LogSettings
from tests.streamlog.conftest import redis_server, redis_url

# The shared redis-server fixtures of tests/streamlog (imported: fixtures by name).
__all__ = ["redis_server", "redis_url"]

pytestmark = pytest.mark.anyio


@pytest.fixture
async def admission(redis_url: str) -> AsyncIterator[ClusterAdmission]:
    """Limit 2, a 0.6 s lease renewed every 0.1 s, on an emptied shared redis-server."""
    settings = Settings(log=LogSettings(redis_url=redis_url), max_streams=2,
                        slot_lease_ttl=0.6, slot_lease_renew=0.1)
    adm = ClusterAdmission(settings, Lifecycle(1.0))
    await adm.start()
    yield adm
    await adm.aclose()


async def _in_use(adm: ClusterAdmission) -> int:
    scopes = (await adm.view([]))["scopes"]
    assert isinstance(scopes, dict)
    return int(scopes["global"]["in_use"])


async def _until_free(adm: ClusterAdmission, within: float) -> None:
    async with asyncio.timeout(within):
        while await _in_use(adm):
            await asyncio.sleep(0.01)


async def test_a_request_cancelled_while_redis_admits_it_gives_the_slot_back(
        admission: ClusterAdmission) -> None:
    """Cancelled after its admission was sent: the granted slot is freed at once."""
    task = asyncio.get_running_loop().create_task(admission.admit("demo"))
    await asyncio.sleep(0)  # submitted; Redis has not answered yet
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _until_free(admission, within=0.3)  # well before the 0.6 s lease would expire
    assert (await admission.view([]))["held_here"] == 0


async def test_a_release_called_twice_frees_one_slot(admission: ClusterAdmission) -> None:
    """Two holders; one release called twice: the other's slot stays held."""
    first, second = await admission.admit("demo"), await admission.admit("demo")
    assert await _in_use(admission) == 2
    first()
    first()
    await _until_free_to(admission, 1)
    second()
    await _until_free(admission, within=1.0)


async def _until_free_to(adm: ClusterAdmission, count: int) -> None:
    async with asyncio.timeout(1.0):
        while await _in_use(adm) != count:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert await _in_use(adm) == count


async def test_the_heartbeat_keeps_a_lease_past_its_ttl(admission: ClusterAdmission) -> None:
    """A slot held for 3 lease TTLs is still counted (renewed, not expired)."""
    release = await admission.admit("demo")
    await asyncio.sleep(1.8)
    assert await _in_use(admission) == 1
    release()
    await _until_free(admission, within=1.0)
