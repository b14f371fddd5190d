"""Databases for the persistence tests: a SQLite file, and a real PostgreSQL server.

The PostgreSQL cluster is private to the test session: ``initdb`` into a temp
directory (as the ``postgres`` user when the tests run as root, since PostgreSQL
refuses to run as root), started with ``pg_ctl`` on an ephemeral loopback port,
stopped and deleted afterwards. Each test gets a fresh database in it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from async_core.harness import free_port as _free_port


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: apt-get install postgresql (see .ci/run)")
    return path


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PostgresCluster:
    """A running private PostgreSQL server on 127.0.0.1."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sb-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = _free_port()
        subprocess.run(_as_postgres([_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres",
                                     "--auth=trust", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True, timeout=120)
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c full_page_writes=off -c max_connections=200")
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), "-o", opts,
                                     "-l", str(self.dir / "log"), "-w", "-t", "60", "start"]),
                       check=True, capture_output=True, timeout=90)

    def create_database(self) -> str:
        """Create an empty database; return its asyncpg URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        subprocess.run(_as_postgres([_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port),
                                     "-U", "postgres", "-q", "-c", f"CREATE DATABASE {name}"]),
                       check=True, capture_output=True, timeout=30)
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its files."""
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast",
                                     "-w", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """The session's PostgreSQL server."""
    cluster = PostgresCluster()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.sqlite3'}"
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return cluster.create_database()
