"""The test harness itself: shared servers still report their problems, and hybrid-50
tests land on the branch they claim."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.clients import PIN, chat_body, stream
from tests.pool import ServerPool
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
    with open(srv.log_file.name, "a", encoding="utf-8") as log:
        log.write("Traceback (most recent call last):\n")
    assert pool.new_problems() == ["[async] Traceback (most recent call last):"]
    assert pool.new_problems() == []


def test_a_pool_stops_the_servers_of_a_path_it_left(pool: ServerPool) -> None:
    """keep_paths=1: asking for another path stops the first path's servers."""
    first = pool.get("async", {"STREAMBRIDGE_HEARTBEAT": "0.5"})
    pool.get("async-uvloop")
    assert first.proc.poll() is not None
    assert pool.new_problems() == []


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
