"""Servers shared by the tests that use the same settings, with per-test log checks.

Starting a server costs 0.6-1.4 s (and stopping one up to 2 s under gevent), so the
tests ask a pool for "a server of this path with these settings" and get the running
one when an earlier test already started it. A shared server must not fail quietly:
after each test the pool reads what every one of its servers logged during that test,
and the test fails if a line is one of ``BAD_LOG_LINES`` (a traceback, a leaked task).

A test on a shared server cannot assume a fresh one: it compares metrics before and
after (``metric(...) == before + 1``), and uses ``make_server`` when it needs a process
of its own (to stop it, or to read absolute counters).
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from tests.clients import HTTP
from tests.reaper import REAPER
from tests.servers import Server

# One finished stream before a pooled server is handed out: its metric files then exist.
# A /metrics scrape racing the creation of a worker's first metric file answers 500
# (prometheus_client reads the empty file: struct.error, seen on legacy-gthread); tests on
# shared servers scrape "before" values right after start, which the old suite never did.
WARM_UP = {"message": "warm-up", "options": {"tokens": 1}}

Key = tuple[str, tuple[tuple[str, str], ...], tuple[str, ...]]


def settings_env(settings: Mapping[str, object]) -> dict[str, str]:
    """``STREAMBRIDGE_*`` environment for ``settings`` (``heartbeat=0.1`` and so on)."""
    return {f"STREAMBRIDGE_{k.upper()}": str(v) for k, v in settings.items()}


class ServerPool:
    """Running servers keyed by (path id, environment, arguments).

    Args:
        keep_paths: how many path ids may have servers at once; when a test asks for
            a server of another path, the servers of the least recently used path are
            stopped (pytest runs a module's tests path by path).
    """

    def __init__(self, keep_paths: int | None = None) -> None:
        self.keep_paths = keep_paths
        self._servers: dict[Key, Server] = {}
        self._checked: dict[Key, int] = {}
        self._paths: list[str] = []  # least recently used first
        self._stop_problems: list[str] = []

    def get(self, path_id: str, env: Mapping[str, str] | None = None,
            args: list[str] | None = None) -> Server:
        """The running server of ``path_id`` with ``env`` and ``args``; start it if none."""
        key: Key = (path_id, tuple(sorted((env or {}).items())), tuple(args or ()))
        if path_id in self._paths:
            self._paths.remove(path_id)
        self._paths.append(path_id)
        if self.keep_paths is not None:
            for old in self._paths[:-self.keep_paths]:
                self._stop_path(old)
        srv = self._servers.get(key)
        if srv is not None and srv.proc.poll() is None:
            return srv
        if srv is not None:  # it died: say so, then start a fresh one
            self._stop_problems.append(
                f"{path_id} server {dict(key[1])} exited with {srv.proc.returncode}")
            self._stop(key)
        srv = Server(path_id, env, args)
        self._servers[key] = srv
        self._checked[key] = 0
        try:  # any answer will do (a server with API keys says 401)
            HTTP.post(srv.url("/v1/chat"), json=WARM_UP, timeout=30).read()
        except httpx.HTTPError as exc:
            self._stop_problems.append(f"[{path_id}] warm-up request failed: {exc!r}")
        return srv

    def new_problems(self) -> list[str]:
        """Bad log lines every server printed since the last call (or its start)."""
        found = self._stop_problems
        self._stop_problems = []
        for key, srv in self._servers.items():
            text, self._checked[key] = srv.log_since(self._checked[key])
            found += [f"[{srv.path_id}] {line}" for line in Server.bad_lines(text)]
        return found

    def close(self) -> list[str]:
        """Stop every server; return the bad lines they printed that no test saw."""
        for srv in self._servers.values():  # SIGTERM them all first: they drain together
            srv.terminate()
        for key in list(self._servers):
            self._stop(key)
        found, self._stop_problems = self._stop_problems, []
        return found

    def _stop_path(self, path_id: str) -> None:
        """Retire the servers of ``path_id``: the module's end waits for them, the next
        path's tests need not (``tests.reaper``)."""
        self._paths.remove(path_id)
        for key in [k for k in self._servers if k[0] == path_id]:
            srv = self._servers.pop(key)
            REAPER.retire(srv, f"the pool's {path_id} server {dict(key[1])}",
                          since=self._checked.pop(key))

    def _stop(self, key: Key) -> None:
        srv = self._servers.pop(key)
        srv.stop()
        text = srv.log_since(self._checked.pop(key), whole_lines=False)[0]
        self._stop_problems += [f"[{srv.path_id}] {line}" for line in Server.bad_lines(text)]
