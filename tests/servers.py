"""Real server processes for the tests: started on 127.0.0.1 with an ephemeral port.

Each server is a subprocess of ``streambridge serve`` (the product's own CLI),
found ready by polling ``/healthz`` (never by sleeping), and stopped by PID.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from tests.clients import HTTP

REPO = Path(__file__).resolve().parent.parent
_LISTEN = re.compile(r"(?:Uvicorn running on|Listening at:) http://127\.0\.0\.1:(\d+) \(")
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
PATH_ARGS: dict[str, list[str]] = {
    "legacy-gthread": ["--path", "legacy", "--worker-class", "gthread"],
    "legacy-gevent": ["--path", "legacy", "--worker-class", "gevent"],
    # The asyncio loop named: with uvloop installed uvicorn's "auto" would pick uvloop.
    "async": ["--path", "async", "--loop", "asyncio"],
    "hybrid-0": ["--path", "hybrid"],
    "hybrid-50": ["--path", "hybrid"],
    "hybrid-100": ["--path", "hybrid"],
}
# Paths only the loop-sensitive contract modules add to their own path_id params (CI
# budget: the async path runs on uvloop there, not the whole suite twice). See
# uvloop_path_ids().
LOOP_PATH_ARGS: dict[str, list[str]] = {
    "async-uvloop": ["--path", "async", "--loop", "uvloop"],
}
# Environment a path id needs: the hybrid front's share of async traffic (migration flag).
PATH_ENV: dict[str, dict[str, str]] = {
    "hybrid-0": {"STREAMBRIDGE_FLAGS_MODE": "0"},
    "hybrid-50": {"STREAMBRIDGE_FLAGS_MODE": "50"},
    "hybrid-100": {"STREAMBRIDGE_FLAGS_MODE": "100"},
}


def uvloop_path_ids() -> list[str]:
    """Every path of ``PATH_ARGS`` plus the async path on uvloop (issue 16 item 0).

    A contract module whose scenarios reach the loop-sensitive code (the upstream
    transport, client wire formats, timers, disconnects) overrides ``path_id`` with
    these params.
    """
    return [*PATH_ARGS, *LOOP_PATH_ARGS]


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


class Server:
    """A running ``streambridge serve`` subprocess.

    Args:
        path_id: one of ``PATH_ARGS``.
        env: extra environment (``STREAMBRIDGE_*`` settings).
        args: extra command-line arguments.
    """

    _terminated = False  # set by terminate() (a class default: subclasses skip __init__)

    def __init__(self, path_id: str, env: Mapping[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.path_id = path_id
        self.log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix=f"sb-{path_id}-", suffix=".log", delete=False)
        full_env = {**os.environ, **BASE_ENV, **PATH_ENV.get(path_id, {}), **(env or {})}
        # Each server gets its own embedded SQLite file unless the test names one.
        full_env.setdefault("STREAMBRIDGE_DATABASE_PATH", os.path.join(
            tempfile.mkdtemp(prefix="sb-db-"), "streambridge.sqlite3"))
        self.db_path = full_env["STREAMBRIDGE_DATABASE_PATH"]
        path_args = {**PATH_ARGS, **LOOP_PATH_ARGS}[path_id]
        cmd = [sys.executable, "-m", "async_core.cli", "serve", *path_args,
               "--port", "0", *(args or [])]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.port = self._wait_port()
            self.base_url = f"http://127.0.0.1:{self.port}"
            self._wait_ready()
        except BaseException:  # a server refused to start: no stop() will close the log
            self.kill()
            self.log_file.close()
            raise

    def url(self, path: str) -> str:
        """Return the absolute URL of ``path`` on this server."""
        return self.base_url + path

    def log(self) -> str:
        """Return everything the server printed so far."""
        return Path(self.log_file.name).read_text(encoding="utf-8", errors="replace")

    def log_since(self, offset: int, *, whole_lines: bool = True) -> tuple[str, int]:
        """Return what the server printed from byte ``offset`` on (up to its last whole
        line unless ``whole_lines`` is false) and the offset after it: a shared server's
        log grows all session long, so its checks read only what is new."""
        with open(self.log_file.name, "rb") as f:
            f.seek(offset)
            data = f.read()
        if whole_lines:
            data = data[:data.rfind(b"\n") + 1]
        return data.decode("utf-8", errors="replace"), offset + len(data)

    def _wait_port(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = _LISTEN.search(self.log())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"server did not report its port within {timeout} s:\n{self.log()}")

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if HTTP.get(self.url("/healthz"), timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"server not ready within {timeout} s:\n{self.log()}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to the server's main process."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; return its exit status."""
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the server's process group (only processes this test started)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self) -> None:
        """Send SIGTERM once (a second one makes uvicorn skip its graceful shutdown)."""
        if not self._terminated:
            self._terminated = True
            self.signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (unless ``terminate`` sent it), wait, then SIGKILL if needed; return
        the exit status."""
        try:
            self.terminate()
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode
        finally:
            self.log_file.close()

    def problems(self) -> list[str]:
        """Return log lines that no correct run prints (leaked tasks, tracebacks)."""
        return self.bad_lines(self.log())

    @staticmethod
    def bad_lines(text: str) -> list[str]:
        """The lines of ``text`` that are one of ``BAD_LOG_LINES``."""
        return [line for line in text.splitlines()
                if any(bad in line for bad in BAD_LOG_LINES)]
