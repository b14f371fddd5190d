"""Fixtures shared by every test: real servers per path, and leak checks."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.clients import OPEN_RAW
from tests.servers import PATH_ARGS, Server


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """janus is asyncio-only, so every async test runs on asyncio."""
    return "asyncio"


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread of its own running."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()
              and not t.daemon]
    assert not leaked, f"threads leaked: {leaked}"


@pytest.fixture(autouse=True)
def close_raw_clients() -> Iterator[None]:
    """Close raw-socket clients a test left open (a failing assertion skips its close())."""
    yield
    while OPEN_RAW:
        OPEN_RAW.pop().close()


@pytest.fixture(scope="module", params=list(PATH_ARGS))
def path_id(request: pytest.FixtureRequest) -> str:
    """Each contract test runs once per serving path."""
    return str(request.param)


@pytest.fixture(scope="module")
def server(path_id: str) -> Iterator[Server]:
    """A server of the current path on default test settings, shared by a module."""
    srv = Server(path_id)
    yield srv
    srv.stop()
    assert not srv.problems(), "\n".join(srv.problems())


@pytest.fixture
def make_server(path_id: str) -> Iterator[Callable[..., Server]]:
    """Start servers of the current path with settings: ``make_server(heartbeat=0.1)``."""
    started: list[Server] = []

    def make(args: list[str] | None = None, **settings: Any) -> Server:
        env = {f"STREAMBRIDGE_{k.upper()}": str(v) for k, v in settings.items()}
        srv = Server(path_id, env, args)
        started.append(srv)
        return srv

    yield make
    problems = []
    for srv in started:
        srv.stop()
        problems += srv.problems()
    assert not problems, "\n".join(problems)
