"""A bad configuration is one line and a non-zero exit on every path: never a traceback or a hang.

Paths: ``streambridge serve`` (async, legacy, hybrid) and the user's own gunicorn
command (``gunicorn -c python:legacy_bridge.gunicorn_conf app``) and the hybrid front's
(``gunicorn -c python:migration.hybrid_gunicorn_conf``); then the other
commands (``db``, ``compare``, ``flags``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.servers import REPO

GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "python:legacy_bridge.gunicorn_conf",
            "--bind", "127.0.0.1:0", "legacy_bridge.app:create_app()"]
HYBRID_GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "python:migration.hybrid_gunicorn_conf",
                   "--bind", "127.0.0.1:0"]
SERVE = [sys.executable, "-m", "migration.cli", "serve", "--port", "0"]
PATHS: dict[str, list[str]] = {
    "serve-async": [*SERVE, "--path", "async"],
    "serve-legacy": [*SERVE, "--path", "legacy"],
    "serve-hybrid": [*SERVE, "--path", "hybrid"],
    "gunicorn": GUNICORN,
    "hybrid-gunicorn": HYBRID_GUNICORN,
}
# (id, environment, what the one line must say)
BAD_SETTINGS: list[tuple[str, dict[str, str], str]] = [
    ("agent-module", {"STREAMBRIDGE_AGENTS": "no_such_module:AGENTS"},
     "cannot load agents from 'no_such_module:AGENTS'"),
    ("database-driver", {"STREAMBRIDGE_DATABASE_URL": "mysql://u@localhost/db"},
     "STREAMBRIDGE_DATABASE_URL uses driver"),
    ("database-unreachable", {"STREAMBRIDGE_DATABASE_URL": "postgresql://u@127.0.0.1:1/db"},
     "cannot connect to the database"),
    ("heartbeat-nan", {"STREAMBRIDGE_HEARTBEAT": "nan"}, "STREAMBRIDGE_HEARTBEAT"),
    ("negative-limit", {"STREAMBRIDGE_MAX_STREAMS": "-1"}, "STREAMBRIDGE_MAX_STREAMS"),
    ("negative-grace", {"STREAMBRIDGE_DRAIN_GRACE": "-5"}, "STREAMBRIDGE_DRAIN_GRACE"),
    ("bad-api-key", {"STREAMBRIDGE_API_KEYS": "acme:short"}, "at least 16 characters"),
    ("redis-unreachable", {"STREAMBRIDGE_REDIS_URL": "redis://127.0.0.1:1/0"},
     "STREAMBRIDGE_REDIS_URL=redis://127.0.0.1:1/0 is unreachable"),
    ("bad-on-disconnect", {"STREAMBRIDGE_ON_DISCONNECT": "later"},
     "STREAMBRIDGE_ON_DISCONNECT must be cancel or continue"),
    ("limits-failure-mode", {"STREAMBRIDGE_LIMITS_ON_REDIS_FAILURE": "fallback"},
     "STREAMBRIDGE_LIMITS_ON_REDIS_FAILURE must be open, closed or local"),
]


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 60,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to its end (a hang fails the test at ``timeout``)."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", "STREAMBRIDGE_DATABASE_PATH": os.path.join(
        tempfile.mkdtemp(prefix="sb-db-"), "sb.sqlite3"), **(env or {})}
    # Its own session, so a hang is ended with every process it started (a timed-out
    # gunicorn master killed alone leaves its workers running).
    proc = subprocess.Popen(cmd, cwd=cwd or REPO, env=full, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def assert_one_line_error(done: subprocess.CompletedProcess[str], expected: str) -> None:
    """Non-zero exit, our one line naming the problem, no traceback."""
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "Traceback" not in out, out
    ours = [line for line in out.splitlines() if line.startswith("streambridge")]
    assert len(ours) == 1, out
    assert expected in ours[0], out


# Every bad setting on each distinct start-up: the command line (its preflight runs before
# any path starts), the user's gunicorn command and the hybrid front's. ``serve --path
# legacy`` and ``--path hybrid`` run that same preflight before they exec gunicorn, so they
# get two settings each (one parsed, one a resource reached), not all ten again.
MATRIX = [pytest.param(path, *b[1:], id=f"{b[0]}-{path}") for b in BAD_SETTINGS
          for path in ("serve-async", "gunicorn", "hybrid-gunicorn")]
MATRIX += [pytest.param(path, *b[1:], id=f"{b[0]}-{path}") for b in BAD_SETTINGS
           if b[0] in ("heartbeat-nan", "database-unreachable")
           for path in ("serve-legacy", "serve-hybrid")]


@pytest.mark.parametrize(("path", "env", "expected"), MATRIX)
def test_a_bad_setting_is_one_line_and_a_non_zero_exit(
        path: str, env: dict[str, str], expected: str) -> None:
    """Each bad setting stops each way to start at start-up with one line naming it."""
    assert_one_line_error(run(PATHS[path], env), expected)


# The hybrid front's own settings (async_core.load_settings), on both ways to start it.
HYBRID_SETTINGS: list[tuple[str, str, dict[str, str], str]] = [
    ("serve-hybrid", "threads-word", {"STREAMBRIDGE_HYBRID_THREADS": "many"},
     "STREAMBRIDGE_HYBRID_THREADS='many' is not a valid int"),
    ("hybrid-gunicorn", "threads-negative", {"STREAMBRIDGE_HYBRID_THREADS": "-2"},
     "STREAMBRIDGE_HYBRID_THREADS must be >= 0"),
    ("serve-hybrid", "flags-mode", {"STREAMBRIDGE_FLAGS_MODE": "sometimes"},
     "STREAMBRIDGE_FLAGS_MODE: mode must be"),
    ("hybrid-gunicorn", "workers", {"STREAMBRIDGE_WORKERS": "none"},
     "STREAMBRIDGE_WORKERS='none' is not a valid int"),
]


@pytest.mark.parametrize(("path", "env", "expected"), [h[0:1] + h[2:] for h in HYBRID_SETTINGS],
                         ids=[f"{h[0]}-{h[1]}" for h in HYBRID_SETTINGS])
def test_a_bad_hybrid_front_setting_is_one_line_and_a_non_zero_exit(
        path: str, env: dict[str, str], expected: str) -> None:
    """The front's settings are parsed once, before gunicorn starts: one line naming them."""
    assert_one_line_error(run(PATHS[path], env), expected)


@pytest.mark.parametrize(("cmd", "env"), [
    (GUNICORN, {"STREAMBRIDGE_WORKER_CLASS": "sync"}),
    ([*GUNICORN[:-1], "--worker-class", "sync", GUNICORN[-1]], {}),
    ([*SERVE, "--path", "legacy", "--worker-class", "sync"], {}),
], ids=["gunicorn-env", "gunicorn-flag", "serve"])
def test_the_sync_worker_class_is_refused(cmd: list[str], env: dict[str, str]) -> None:
    """gunicorn's sync worker (one stream per process) is refused in one line."""
    assert_one_line_error(run(cmd, env), "sync")


@pytest.mark.parametrize("cmd", [
    [*GUNICORN[:5], "--bind", "0.0.0.0:0", GUNICORN[-1]],
    [*HYBRID_GUNICORN[:5], "--bind", "0.0.0.0:0"],
    [*SERVE, "--path", "legacy", "--host", "0.0.0.0"],
    [*SERVE, "--path", "async", "--host", "0.0.0.0"],
], ids=["gunicorn", "hybrid-gunicorn", "serve-legacy", "serve-async"])
def test_binding_beyond_loopback_without_api_keys_is_refused(cmd: list[str]) -> None:
    """The user's gunicorn command refuses 0.0.0.0 without keys, as serve does."""
    assert_one_line_error(run(cmd, {"STREAMBRIDGE_API_KEYS": ""}), "refusing to listen on")


def test_a_worker_that_cannot_start_stops_gunicorn_with_one_line(tmp_path: Path) -> None:
    """Agents that load in the master's check but fail in the worker: exit 3, no hang.

    (Before, the worker's loop thread died and every request hung forever; with the
    agents loaded when the app is built, gunicorn printed a traceback.)
    """
    (tmp_path / "flaky_agents.py").write_text(
        "import os\n"
        "MASTER = os.getpid()\n"
        "def AGENTS():\n"
        "    if os.getpid() != MASTER:\n"
        "        raise RuntimeError('the agents fail in the worker')\n"
        "    return []\n")
    env = {"STREAMBRIDGE_AGENTS": "flaky_agents:AGENTS",
           "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    done = run(GUNICORN, env)
    assert_one_line_error(done, "cannot start: cannot load agents from "
                                "'flaky_agents:AGENTS': RuntimeError: the agents fail")
    assert done.returncode == 3  # gunicorn's boot error: the arbiter stopped


@pytest.mark.parametrize("action", ["upgrade", "downgrade"])
def test_an_unknown_revision_is_one_line(action: str) -> None:
    """``streambridge db upgrade|downgrade nosuch`` names the known revisions."""
    done = run([sys.executable, "-m", "migration.cli", "db", action, "nosuch"])
    assert_one_line_error(done, "Can't locate revision identified by 'nosuch'")


def test_db_against_an_unreachable_database_is_one_line() -> None:
    """``streambridge db upgrade`` with a database that refuses connections."""
    done = run([sys.executable, "-m", "migration.cli", "db", "upgrade"],
               {"STREAMBRIDGE_DATABASE_URL": "postgresql://u@127.0.0.1:1/db"})
    assert_one_line_error(done, "streambridge db:")


@pytest.mark.parametrize(("html", "expected"), [
    ("/nonexistent-dir/report.html", "does not exist"),
    ("/tmp", "is a directory"),
])
def test_a_bad_compare_html_path_is_refused_before_measuring(html: str, expected: str) -> None:
    """``compare --html`` with a path it could not write fails at once, not after the run."""
    done = run([sys.executable, "-m", "migration.cli", "compare", "--html", html], timeout=20)
    assert_one_line_error(done, expected)


@pytest.mark.parametrize("name", ["missing.toml", "mistyped.json"])
def test_flags_show_on_a_missing_file_is_one_line_and_non_zero(tmp_path: Path,
                                                               name: str) -> None:
    """``flags show`` on a missing or mistyped path does not print a default config."""
    done = run([sys.executable, "-m", "migration.cli", "flags", "show", "--file",
                str(tmp_path / name)])
    assert_one_line_error(done, "no flag file at")
    assert done.stdout == ""
