"""A real ``redis-server`` (Debian package) for the Redis backend's tests.

Each server is private (``async_core.harness.RedisServer``): a temp dir, a loopback
ephemeral port, no persistence (``--save '' --appendonly no``), polled for readiness,
stopped by its PID. A test that needs to restart Redis mid-stream gets its own
(``make_redis``); the rest share one per module and start from an empty database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from async_core.harness import RedisServer

__all__ = ["RedisServer"]  # the tests' own name for it (cluster tests import it from here)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server shared by a test module."""
    srv = RedisServer()
    yield srv
    srv.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared server's URL, its database emptied first."""
    assert redis_server.command("FLUSHALL") == "+OK"
    return redis_server.url


@pytest.fixture
def make_redis() -> Iterator[Callable[[], RedisServer]]:
    """Start private servers a test may restart."""
    started: list[RedisServer] = []

    def make() -> RedisServer:
        started.append(RedisServer())
        return started[-1]

    yield make
    for srv in started:
        srv.close()
