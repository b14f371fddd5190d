"""A real ``redis-server`` (Debian package) for the Redis backend's tests.

Each server is private: a temp dir, a loopback ephemeral port, no persistence
(``--save '' --appendonly no``), polled for readiness, stopped by its PID. A test that
needs to restart Redis mid-stream gets its own (``make_redis``); the rest share one per
module and start from an empty database.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server on 127.0.0.1; ``restart()`` keeps the port, loses the data."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run scripts/install-test-deps")
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="sb-redis-"))
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        """The ``redis://`` URL of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers ``PING``."""
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.command("PING") == "+PONG":
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "redis.log").read_text())
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING in 10 s")

    def stop(self) -> None:
        """Stop the server (SIGTERM to its PID, then wait)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port: every key is lost."""
        self.stop()
        self.start()

    def command(self, *args: str) -> str:
        """Send one inline command with a simple reply (``PING``, ``FLUSHALL``); return it."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall((" ".join(args) + "\r\n").encode())
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data.decode().strip()

    def close(self) -> None:
        """Stop and delete the temp dir."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server shared by a test module."""
    srv = RedisServer()
    yield srv
    srv.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared server's URL, its database emptied first."""
    assert redis_server.command("FLUSHALL") == "+OK"
    return redis_server.url


@pytest.fixture
def make_redis() -> Iterator[Callable[[], RedisServer]]:
    """Start private servers a test may restart."""
    started: list[RedisServer] = []

    def make() -> RedisServer:
        started.append(RedisServer())
        return started[-1]

    yield make
    for srv in started:
        srv.close()
