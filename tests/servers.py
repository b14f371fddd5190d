"""Real server processes for the tests: ``async_core.harness`` with the tests' defaults.

Each server is a subprocess of ``streambridge serve`` (the product's own CLI) on a
path of the harness' one table (``async_core.harness.PATHS``), found ready by
polling ``/healthz`` (never by sleeping), and stopped by PID. What is the tests' own
lives here: the probe agents and fast timers of every test server, an embedded
SQLite file per server, the log lines that fail a test.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from async_core.harness import CONTRACT_PATHS, LOOP_PATHS, PATHS, ServerProcess, serve_command

REPO = Path(__file__).resolve().parent.parent
BAD_LOG_LINES = ("Task was destroyed but it is pending", "Exception in ASGI application",
                 "Traceback (most recent call last)", "Error in streambridge")

# The probe agents, a fast heartbeat (the legacy path's disconnect probe) and
# loopback-only defaults for every test server.
BASE_ENV = {
    "STREAMBRIDGE_AGENTS": "tests.probe_agents:AGENTS",
    "STREAMBRIDGE_HEARTBEAT": "0.25",
    "STREAMBRIDGE_DRAIN_GRACE": "2",
    "PYTHONUNBUFFERED": "1",
}

# Every path the contract suite runs on: (id, serve arguments).
PATH_ARGS: dict[str, list[str]] = {p: PATHS[p].serve_args() for p in CONTRACT_PATHS}


def uvloop_path_ids() -> list[str]:
    """Every path of ``PATH_ARGS`` plus the async path on uvloop (issue 16 item 0).

    A contract module whose scenarios reach the loop-sensitive code (the upstream
    transport, client wire formats, timers, disconnects) overrides ``path_id`` with
    these params.
    """
    return [*CONTRACT_PATHS, *LOOP_PATHS]


def served_path(path_id: str, conversation_id: str, agent: str = "demo") -> str:
    """The X-Stream-Path a request of ``conversation_id`` gets on ``path_id``.

    ``legacy``/``async`` on those paths; on ``hybrid-N`` whatever the flag decides
    (a pure function of the percentage and the conversation's sticky bucket).
    """
    if not path_id.startswith("hybrid-"):
        return path_id.split("-")[0]
    from migration.flags import FlagConfig, RouteRequest, decide

    config = FlagConfig(mode=int(path_id.split("-")[1]))
    return decide(config, RouteRequest(agent, conversation_id)).path


@functools.cache
def _migrated_template() -> str:
    """An embedded SQLite file at the schema head, made once per test process by the CLI."""
    path = os.path.join(tempfile.mkdtemp(prefix="sb-db-template-"), "streambridge.sqlite3")
    subprocess.run([sys.executable, "-m", "async_core.cli", "db", "upgrade"], check=True,
                   env={**os.environ, "STREAMBRIDGE_DATABASE_PATH": path},
                   stdout=subprocess.DEVNULL, cwd=REPO)
    return path


def fresh_database() -> str:
    """The path of a new embedded SQLite file, already migrated (a copy of one template).

    A server then starts as it restarts in production, on a database at the head
    revision, and skips Alembic (about 0.2 s of CPU a start). The first start on an
    empty file (the migration under its file lock) is what the examples' tests and
    ``tests/store`` run.
    """
    template = _migrated_template()
    path = os.path.join(tempfile.mkdtemp(prefix="sb-db-"), "streambridge.sqlite3")
    for suffix in ("", "-wal"):
        if os.path.exists(template + suffix):
            shutil.copyfile(template + suffix, path + suffix)
    return path


class Server(ServerProcess):
    """A running ``streambridge serve`` subprocess on a path of the harness' table.

    Args:
        path_id: one of ``async_core.harness.PATHS``.
        env: extra environment (``STREAMBRIDGE_*`` settings).
        args: extra command-line arguments.
    """

    def __init__(self, path_id: str, env: Mapping[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.path_id = path_id
        full_env = {**BASE_ENV, **PATHS[path_id].env, **(env or {})}
        # Each server gets its own embedded SQLite file unless the test names one.
        self.db_path = full_env.setdefault("STREAMBRIDGE_DATABASE_PATH", fresh_database())
        super().__init__(path_id, serve_command(path_id, args=args or ()), env=full_env,
                         cwd=REPO)

    def problems(self) -> list[str]:
        """Return log lines that no correct run prints (leaked tasks, tracebacks)."""
        return self.bad_lines(self.log())

    @staticmethod
    def bad_lines(text: str) -> list[str]:
        """The lines of ``text`` that are one of ``BAD_LOG_LINES``."""
        return [line for line in text.splitlines()
                if any(bad in line for bad in BAD_LOG_LINES)]
