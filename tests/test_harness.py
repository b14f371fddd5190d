"""The test harness itself: shared servers still report their problems, hybrid-50 tests
land on the branch they claim, and ``async_core.harness`` starts and stops what it must."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from async_core.harness import CONTRACT_PATHS, LOOP_PATHS, PATHS, ServerProcess
from tests.clients import PIN, chat_body, stream
from tests.pool import ServerPool
from tests.reaper import REAPER
from tests.servers import Server, served_path


@pytest.fixture(scope="module")
def pool() -> Iterator[ServerPool]:
    """A pool of this module's own (not the conftest's: this test writes into its logs)."""
    own = ServerPool(keep_paths=1)
    yield own
    own.close()


def test_a_shared_server_is_reused_and_its_bad_log_lines_reach_the_next_check(
        pool: ServerPool) -> None:
    """Same settings, same process; a traceback it logs is reported once, then not again."""
    srv = pool.get("async", {"STREAMBRIDGE_HEARTBEAT": "0.5"})
    assert pool.get("async", {"STREAMBRIDGE_HEARTBEAT": "0.5"}) is srv
    assert pool.new_problems() == []
    with srv.log_path.open("a", encoding="utf-8") as log:
        log.write("Traceback (most recent call last):\n")
    assert pool.new_problems() == ["[async] Traceback (most recent call last):"]
    assert pool.new_problems() == []


def test_a_pool_stops_the_servers_of_a_path_it_left(pool: ServerPool) -> None:
    """keep_paths=1: asking for another path retires the first path's servers (SIGTERM
    now); the reaper has them exited, and their logs read, at the module's end."""
    first = pool.get("async", {"STREAMBRIDGE_HEARTBEAT": "0.5"})
    pool.get("async-uvloop")
    assert first.terminated
    assert REAPER.reap() == []
    assert first.proc.poll() is not None
    assert pool.new_problems() == []


def test_a_retired_servers_bad_lines_fail_the_module_naming_its_test() -> None:
    """What a retired server logs after its last check, up to its exit, is reported with
    the test that started it (the synchronous stop used to fail that test)."""
    srv = Server("async")
    offset = srv.log_since(0)[1]
    REAPER.retire(srv, "tests/x.py::test_y", since=offset)
    with srv.log_path.open("a", encoding="utf-8") as log:
        log.write("Traceback (most recent call last):\n")
    assert REAPER.reap() == [
        "[async, started by tests/x.py::test_y] Traceback (most recent call last):"]
    assert srv.proc.poll() is not None


@pytest.mark.parametrize("branch", ["legacy", "async"], ids=["legacy_branch", "async_branch"])
def test_pinned_hybrid_50_bodies_are_served_on_their_branch(branch: str) -> None:
    """Every pinned conversation id lands on the claimed branch of a real hybrid-50 front."""
    srv = Server("hybrid-50")
    try:
        PIN.branch = branch
        for _ in range(6):
            body = chat_body(tokens=1)
            assert served_path("hybrid-50", body["conversation_id"]) == branch
            r = stream(srv.url("/v1/chat"), body)
            assert r.headers["x-stream-path"] == branch
        r = stream(srv.url("/v1/chat"), {"message": "x", "options": {"tokens": 1}})
        assert r.kinds()[-1] == "done"
        assert PIN.served == [branch] * 7  # stream() records every pinned stream
        explicit = stream(srv.url("/v1/chat"), {**body, "conversation_id": "mine-1"})
        assert explicit.headers["x-conversation-id"] == "mine-1"
        assert len(PIN.served) == 7  # a test's own id is not pinned, nor recorded
    finally:
        PIN.branch = None
        srv.stop()
    assert not srv.problems()


def test_the_path_table_serves_only_known_paths_and_holds_every_suite_and_compare_path() -> None:
    """One table: each path id starts a ``serve --path`` the CLI knows, and the contract
    suite's paths and compare's rows are all ids of it."""
    from async_core.cli._commands import PATHS as SERVE_PATHS
    from async_core.cli.compare import PATH_ROWS

    assert {spec.serve for spec in PATHS.values()} <= set(SERVE_PATHS)
    assert set(CONTRACT_PATHS) | set(LOOP_PATHS) | set(PATH_ROWS.values()) <= set(PATHS)
    assert served_path("legacy-gevent", "c") == "legacy"


def test_a_server_that_exits_before_listening_fails_with_its_log() -> None:
    """No port, no wait: the exit status and what the process printed are in the error."""
    with pytest.raises(RuntimeError, match=r"(?s)exited with 3:.*boom"):
        ServerProcess("quits", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"])


def test_a_server_that_ignores_sigterm_is_killed_with_its_group(tmp_path: Path) -> None:
    """stop() waits its timeout after SIGTERM, then SIGKILLs the process group."""
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('Listening at: http://127.0.0.1:1 (', flush=True); time.sleep(60)")
    srv = ServerProcess("stubborn", [sys.executable, "-c", code], health=None, log_dir=tmp_path)
    assert srv.port == 1 and srv.log_path.parent == tmp_path
    assert srv.stop(timeout=0.5) == -signal.SIGKILL
