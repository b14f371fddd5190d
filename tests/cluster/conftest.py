"""Fixtures of the cluster tests: one private redis-server a module, Celery workers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from async_core.streamlog import LogSettings, RedisLog
from tests.cluster.processes import FAST_LEASES, CeleryWorker
from tests.streamlog.conftest import RedisServer

# The same short leases for the test's own RedisLog (the reading, sweeping "server").
FAST: dict[str, Any] = {k.removeprefix("STREAMBRIDGE_").lower(): float(v)
                        for k, v in FAST_LEASES.items()}


@pytest.fixture(scope="module")
def cluster_redis() -> Iterator[RedisServer]:
    """A redis-server shared by a module: db 0 the stream log, db 1 Celery's broker."""
    srv = RedisServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def make_worker(cluster_redis: RedisServer) -> Iterator[Callable[[], CeleryWorker]]:
    """Start Celery workers on the module's Redis; stopped at the end of the module."""
    started: list[CeleryWorker] = []

    def make() -> CeleryWorker:
        started.append(CeleryWorker(cluster_redis.url.replace("/0", "/1"), cluster_redis.url,
                                    queue=f"sbtest-{len(started)}"))
        return started[-1]

    yield make
    for worker in started:
        worker.stop()


@pytest.fixture
async def reader(cluster_redis: RedisServer) -> AsyncIterator[RedisLog]:
    """A RedisLog playing a server process: it reads, cancels and sweeps."""
    log = await RedisLog.open(LogSettings(redis_url=cluster_redis.url, **FAST))
    yield log
    await log.aclose()
