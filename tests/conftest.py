"""Fixtures shared by every test: real servers per path, and leak checks."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from async_core.harness import CONTRACT_PATHS
from tests.clients import OPEN_RAW, PIN
from tests.pool import ServerPool, settings_env
from tests.reaper import REAPER
from tests.servers import Server

# The pools alive now (the session's, the current module's): the per-test log check reads them.
_POOLS: list[ServerPool] = []

# The modules that take longest (seconds of setup + call + teardown, measured with
# ``--durations=0``: 140 down to 34 s), run first. ``--dist loadscope`` hands modules to
# the xdist workers in collection order, so a long module collected last would run alone
# at the end while the other workers idle. Order only: a stale list costs wall time, never
# a result. Re-measure when the suite changes shape.
SLOW_FIRST = (
    "contract/test_webhooks.py", "contract/test_store_faults.py", "contract/test_timeouts.py",
    "contract/test_admission.py", "contract/test_websocket.py", "contract/test_auth.py",
    "migration/test_runbooks.py", "contract/test_conversations.py", "test_startup_errors.py",
    "contract/test_fuzz.py", "contract/test_shutdown.py", "contract/test_providers.py",
    "contract/test_resume.py", "migration/test_hybrid.py", "migration/test_nginx.py",
    "contract/test_retries.py", "contract/test_slowloris.py", "contract/test_backpressure.py",
    "contract/test_bad_input.py", "contract/test_disconnect.py",
    "contract/test_identical_bytes.py", "test_install.py", "contract/test_clients.py",
    "examples/test_flask_app.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the modules of ``SLOW_FIRST`` to the front, in its order (stable otherwise)."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}

    def key(item: pytest.Item) -> int:
        module = item.nodeid.split("::", 1)[0].removeprefix("tests/")
        return rank.get(module, len(SLOW_FIRST))

    items.sort(key=key)


@pytest.fixture(scope="module", autouse=True)
def reap_retired_servers() -> Iterator[None]:
    """Wait, at the module's end, for the servers its tests retired (``tests.reaper``);
    fail on a traceback or a leaked task in their logs. Torn down last: set up first."""
    yield
    problems = REAPER.reap()
    assert not problems, "a retired server logged:\n" + "\n".join(problems)


@pytest.fixture(scope="session", autouse=True)
def reap_what_modules_left() -> Iterator[None]:
    """A server retired after its module's reaper ran (a session fixture's) is waited for
    at the session's end."""
    yield
    problems = REAPER.reap()
    assert not problems, "a retired server logged:\n" + "\n".join(problems)


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
def shared_server_logs_clean() -> Iterator[None]:
    """Fail a test during which a shared server logged a traceback or a leaked task."""
    yield
    problems = [line for pool in _POOLS for line in pool.new_problems()]
    assert not problems, "a shared server logged:\n" + "\n".join(problems)


@pytest.fixture(autouse=True)
def hybrid_branch(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The branch a test on ``hybrid-50`` claims (None on every other path).

    Chosen from the test's name (half the tests each way, the same in every run); the
    test's chat bodies get conversation ids whose sticky bucket is on that branch
    (``tests.clients.HybridPin``), and the test fails if a pinned stream was served on
    the other branch.
    """
    branch = None
    if "path_id" in request.fixturenames and request.getfixturevalue("path_id") == "hybrid-50":
        name = request.node.nodeid.replace("hybrid-50", "")
        branch = ("legacy", "async")[zlib.crc32(name.encode()) % 2]
        request.node.user_properties.append(("hybrid_branch", branch))
    PIN.branch, PIN.served = branch, []
    yield branch
    PIN.branch = None
    wrong = [path for path in PIN.served if branch and path != branch]
    assert not wrong, f"hybrid-50 test claims {branch}, streams served on {wrong}"


@pytest.fixture(autouse=True)
def close_raw_clients() -> Iterator[None]:
    """Close raw-socket clients a test left open (a failing assertion skips its close())."""
    yield
    while OPEN_RAW:
        OPEN_RAW.pop().close()


@pytest.fixture(scope="module", params=list(CONTRACT_PATHS))
def path_id(request: pytest.FixtureRequest) -> str:
    """Each contract test runs once per serving path."""
    return str(request.param)


def _pool(keep_paths: int | None) -> Iterator[ServerPool]:
    pool = ServerPool(keep_paths)
    _POOLS.append(pool)
    yield pool
    _POOLS.remove(pool)
    problems = pool.close()
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="session")
def session_pool() -> Iterator[ServerPool]:
    """Servers on default test settings, one per path, shared by the whole session."""
    yield from _pool(None)


@pytest.fixture(scope="module")
def module_pool() -> Iterator[ServerPool]:
    """Servers with a module's own settings, shared by its tests, one path at a time."""
    yield from _pool(1)


@pytest.fixture(scope="module")
def server(path_id: str, session_pool: ServerPool) -> Server:
    """A server of the current path on default test settings, shared by the session.

    Do not assume a fresh process: compare metrics with their value before the test,
    or use ``make_server`` for a server of the test's own.
    """
    return session_pool.get(path_id)


@pytest.fixture
def shared_server(path_id: str, module_pool: ServerPool) -> Callable[..., Server]:
    """A server of the current path with settings, shared by the module's tests that ask
    for the same ones: ``shared_server(idle_timeout=0.3)``.

    Use it when the test leaves the server as it found it (no SIGTERM, metrics compared
    with their value before the test); otherwise use ``make_server``.
    """
    def get(args: list[str] | None = None, **settings: Any) -> Server:
        return module_pool.get(path_id, settings_env(settings), args)

    return get


@pytest.fixture
def make_server(path_id: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., Server]]:
    """Start servers of the current path with settings: ``make_server(heartbeat=0.1)``."""
    started: list[Server] = []

    def make(args: list[str] | None = None, **settings: Any) -> Server:
        srv = Server(path_id, settings_env(settings), args)
        started.append(srv)
        return srv

    yield make
    for srv in started:  # SIGTERM now; exits and logs are checked at the module's end
        REAPER.retire(srv, request.node.nodeid)
