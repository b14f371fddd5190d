"""``pip install .`` with no extras, in a fresh virtual environment, gives a working CLI.

The CLI's commands run from outside the checkout (so nothing is imported from it):
``--help``, ``flags set``/``show``, ``db upgrade``/``current``, ``serve --path async``
(a stream end to end, then SIGTERM), and ``compare``, whose optional dependency
(psutil) is missing: one line naming the extra.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from async_core.harness import wait_healthy
from tests.clients import drains_cleanly
from tests.servers import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with ``pip install <repo>``: no extras, no test dependencies."""
    root = tmp_path_factory.mktemp("bare-venv")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True,
                   timeout=120)
    pip = subprocess.run([str(root / "venv" / "bin" / "pip"), "install", "-q",
                          "--disable-pip-version-check", str(REPO)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return root / "venv"


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PYTHONUNBUFFERED": "1",
            "STREAMBRIDGE_DATABASE_PATH": str(tmp / "var" / "sb.sqlite3")}


def _cli(venv: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "streambridge"), *args], cwd=tmp,
                          env=_env(tmp), capture_output=True, text=True, timeout=60,
                          check=False)


def test_the_bare_install_lacks_the_optional_dependencies(bare_venv: Path) -> None:
    """The venv really is bare: psutil (compare) and pytest are not installed."""
    for module in ("psutil", "pytest"):
        done = subprocess.run([str(bare_venv / "bin" / "python"), "-c", f"import {module}"],
                              capture_output=True, timeout=60, check=False)
        assert done.returncode != 0, module


def test_help_flags_and_db_work_without_extras(bare_venv: Path, tmp_path: Path) -> None:
    """--help, flags set/show and db upgrade/current run and exit 0."""
    done = _cli(bare_venv, tmp_path, "--help")
    assert done.returncode == 0 and "serve" in done.stdout, done.stderr
    flags = str(tmp_path / "etc" / "flags.toml")
    done = _cli(bare_venv, tmp_path, "flags", "set", "--file", flags, "mode=legacy")
    assert done.returncode == 0, done.stderr
    done = _cli(bare_venv, tmp_path, "flags", "show", "--file", flags)
    assert done.returncode == 0 and json.loads(done.stdout)["mode"] == "legacy", done.stderr
    done = _cli(bare_venv, tmp_path, "db", "upgrade")
    assert done.returncode == 0 and "revision: 0001" in done.stdout, done.stderr
    done = _cli(bare_venv, tmp_path, "db", "current")
    assert done.returncode == 0 and "revision: 0001" in done.stdout, done.stderr


def test_compare_names_its_extra_in_one_line(bare_venv: Path, tmp_path: Path) -> None:
    """compare needs psutil: one line naming streambridge[compare], exit 2, no traceback."""
    done = _cli(bare_venv, tmp_path, "compare", "--paths", "async")
    assert done.returncode == 2
    assert done.stderr.strip() == ("streambridge compare: needs psutil: "
                                   "pip install 'streambridge[compare]'")


def test_serve_async_streams_and_drains_without_extras(bare_venv: Path,
                                                       tmp_path: Path) -> None:
    """serve --path async starts, streams one reply to its done, and exits on SIGTERM."""
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(bare_venv / "bin" / "streambridge"), "serve", "--path",
                                 "async", "--port", "0"], cwd=tmp_path, env=_env(tmp_path),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    with drains_cleanly(proc, log):
        deadline = time.monotonic() + 60
        port = None
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+) \(", log.read_text())
            port = m.group(1) if m else None
            time.sleep(0.05)
        assert port is not None, log.read_text()
        wait_healthy(int(port))
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat", timeout=30,
                       json={"message": "hi", "options": {"tokens": 3}})
        assert r.status_code == 200
        assert r.text.count("event: done") == 1, r.text
