"""``migration/`` and ``legacy_bridge/`` are deletable: what is left installs, serves and migrates.

A copy of the repository without those two folders is installed (``pip install
--no-deps``) into a new virtual environment that borrows this one's third-party
packages through a ``.pth`` line, but not its editable install of streambridge (a
``.pth`` file inside a directory named by a ``.pth`` line is never processed), so
``import legacy_bridge`` really fails there. Then: the console script's
``serve --path async``, ``db upgrade`` on SQLite and PostgreSQL, ``compare`` and the
async path's contract tests (formats and the official clients) run from the copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from async_core.harness import wait_healthy
from tests.clients import chat_body, drains_cleanly, stream, wait_for
from tests.servers import REPO
from tests.store.conftest import PostgresCluster

pytestmark = pytest.mark.slow
GONE = ("legacy_bridge", "migration")
# Build and tool output the copy does not need.
SKIP = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__", ".*_cache",
                              ".hypothesis", "build", "var")


@dataclass
class Stripped:
    """The copy (``root``) and the environment it is installed in (``venv``)."""

    root: Path
    venv: Path
    home: Path

    def env(self, **settings: str) -> dict[str, str]:
        """The environment of a command run there: none of ours on ``PYTHONPATH``."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return {**env, "PYTHONUNBUFFERED": "1", "PATH": f"{self.venv / 'bin'}:{env['PATH']}",
                "STREAMBRIDGE_DATABASE_PATH": str(self.home / "sb.sqlite3"), **settings}

    def run(self, *cmd: str, cwd: Path | None = None, timeout: float = 60,
            **settings: str) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` (``streambridge`` or ``python`` from the venv) to its end."""
        exe = str(self.venv / "bin" / cmd[0])
        return subprocess.run([exe, *cmd[1:]], cwd=cwd or self.home, env=self.env(**settings),
                              capture_output=True, text=True, timeout=timeout, check=False)


def _copy_without(src: Path, dest: Path) -> None:
    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = set(SKIP(folder, names))
        return skipped | (set(GONE) & set(names) if Path(folder) == src else set())

    shutil.copytree(src, dest, ignore=ignore)


@pytest.fixture(scope="module")
def stripped(tmp_path_factory: pytest.TempPathFactory) -> Stripped:
    """The repository minus legacy_bridge/ and migration/, installed in a fresh venv."""
    base = tmp_path_factory.mktemp("deletable")
    root, venv, home = base / "repo", base / "venv", base / "home"
    _copy_without(REPO, root)
    home.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = Stripped(root, venv, home)
    pip = env.run("python", "-m", "pip", "install", "-q", "--no-deps",
                  "--disable-pip-version-check", str(root), timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return env


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    """A private PostgreSQL server for this module."""
    cluster = PostgresCluster()
    yield cluster
    cluster.stop()


def test_the_copy_really_lacks_legacy_bridge_and_migration(stripped: Stripped) -> None:
    """Neither package imports in the venv, not even from the copy's own directory."""
    for cwd in (stripped.home, stripped.root):
        for package in GONE:
            done = stripped.run("python", "-c", f"import {package}", cwd=cwd)
            assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, package
    done = stripped.run("python", "-c", "import async_core.cli; print(async_core.cli.__file__)")
    assert done.stdout.startswith(str(stripped.venv)), done.stdout + done.stderr


def test_the_paths_of_deleted_packages_are_one_line_errors(stripped: Stripped) -> None:
    """``serve --path legacy|hybrid`` name the missing package; ``flags`` is gone from --help."""
    for path, package in (("legacy", "legacy_bridge"), ("hybrid", "migration")):
        done = stripped.run("streambridge", "serve", "--path", path, "--port", "0")
        assert done.returncode == 2, done.stderr
        assert done.stderr == (f"streambridge: --path {path} needs the {package} package, "
                               "which is not installed (available: async)\n")
    done = stripped.run("streambridge", "--help")
    assert done.returncode == 0 and "{serve,compare,db}" in done.stdout, done.stdout
    done = stripped.run("streambridge", "compare", "--paths", "async,legacy-gthread")
    assert done.returncode == 2
    assert done.stderr == ("streambridge compare: unknown path(s) ['legacy-gthread']; "
                           "available: async, async-background, async-redis, celery-pubsub, "
                           "thread-queue\n")


def test_compare_measures_the_async_path(stripped: Stripped) -> None:
    """``compare`` starts its server with the permanent CLI and reports a row for it."""
    done = stripped.run("streambridge", "compare", "--paths", "async", "--rounds", "1",
                        "--concurrency", "2", "--tokens", "4", "--interval-ms", "0",
                        timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^async\s+2\s+0\s", done.stdout, re.MULTILINE), done.stdout


def test_db_upgrade_runs_on_sqlite_and_postgres_and_serve_async_stores_there(
        stripped: Stripped, postgres: PostgresCluster) -> None:
    """``db upgrade`` migrates both databases; ``serve --path async`` then stores a turn."""
    done = stripped.run("streambridge", "db", "upgrade")
    assert done.returncode == 0 and "revision: 0001" in done.stdout, done.stderr
    assert (stripped.home / "sb.sqlite3").exists()
    url = postgres.create_database()
    done = stripped.run("streambridge", "db", "upgrade", STREAMBRIDGE_DATABASE_URL=url)
    assert done.returncode == 0 and "revision: 0001" in done.stdout, done.stderr
    log = stripped.home / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(stripped.venv / "bin" / "streambridge"), "serve",
                                 "--path", "async", "--port", "0"], cwd=stripped.home,
                                env=stripped.env(STREAMBRIDGE_DATABASE_URL=url), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    with drains_cleanly(proc, log):
        port = _port(proc, log)
        base = f"http://127.0.0.1:{port}"
        wait_healthy(int(port))
        r = stream(base + "/v1/chat", chat_body("demo"))
        assert r.headers["x-stream-path"] == "async"
        assert r.kinds()[-1] == "done", r.raw

        def stored() -> list[dict[str, str]] | None:
            resp = httpx.get(f"{base}/v1/conversations/{r.headers['x-conversation-id']}",
                             timeout=10)
            turns = resp.json()["turns"] if resp.status_code == 200 else []
            return turns if turns and turns[-1]["outcome"] == "completed" else None

        assert wait_for(stored, timeout=10)[-1]["content"] == r.text()


def test_the_async_contract_tests_pass_from_the_copy(stripped: Stripped) -> None:
    """The async path's format and official-client contract tests pass, none skipped."""
    done = stripped.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/contract/test_formats.py", "tests/contract/test_clients.py",
                        "-k", "async and not uvloop and not legacy and not hybrid",
                        cwd=stripped.root, timeout=180)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 15, summary
    assert not re.search(r"skipped|xfail|error", summary), summary


def _port(proc: subprocess.Popen[str], log: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+) \(", log.read_text())
        if m:
            return m.group(1)
        time.sleep(0.05)
    raise AssertionError(f"the server did not start:\n{log.read_text()}")
