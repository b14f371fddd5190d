"""With several gunicorn workers, /metrics counts every worker's streams."""

from __future__ import annotations

import os
import tempfile

import httpx
import pytest

from tests.clients import chat_body, metric
from tests.servers import Server


def test_metrics_sum_every_worker() -> None:
    """Requests spread over 3 workers are all counted, whichever worker serves /metrics.

    The three workers start together on an empty embedded database: each one's start-up
    migration waits for the file lock, and none fails (the bad-line check below).
    """
    empty = os.path.join(tempfile.mkdtemp(prefix="sb-db-"), "streambridge.sqlite3")
    srv = Server("legacy-gthread", {"STREAMBRIDGE_DATABASE_PATH": empty},
                 args=["--workers", "3"])
    try:
        pids = set()
        for _ in range(12):
            r = httpx.post(srv.url("/v1/chat"), json={**chat_body(tokens=2), "stream": False},
                           headers={"connection": "close"}, timeout=10)
            assert r.status_code == 200
        for _ in range(3):
            assert metric(srv.base_url, "streambridge_streams_total", outcome="completed",
                          path="legacy") == 12
            assert metric(srv.base_url, "streambridge_active_streams") == 0
        pids = {line.split("pid: ")[1].strip() for line in srv.log().splitlines()
                if "Booting worker with pid" in line}
        assert len(pids) == 3
    finally:
        srv.stop()
    assert not srv.problems(), srv.problems()


@pytest.mark.parametrize(("env", "expected"), [({}, 0.02),
                                               ({"STREAMBRIDGE_SWITCH_INTERVAL": "0"}, 0.005)],
                         ids=["default", "zero-keeps-python-s"])
def test_a_gthread_worker_runs_with_the_configured_switch_interval(
        env: dict[str, str], expected: float) -> None:
    """A gthread worker sets the GIL switch interval (STREAMBRIDGE_SWITCH_INTERVAL, 20 ms
    by default; 0 keeps Python's 5 ms): the agent thread reports what its process runs."""
    srv = Server("legacy-gthread", env={**env, "STREAMBRIDGE_DATABASE_URL": "none"})
    try:
        r = httpx.post(srv.url("/v1/chat"), json={**chat_body("probe-switch"), "stream": False},
                       timeout=10)
        assert r.status_code == 200, r.text
        assert float(r.json()["text"]) == expected
    finally:
        srv.stop()
    assert not srv.problems(), srv.problems()
