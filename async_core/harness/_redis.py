"""A private ``redis-server`` (the Debian package) on a loopback ephemeral port.

A temp dir, no persistence (``--save '' --appendonly no``), polled for readiness with
``PING``, stopped by its PID; ``restart()`` keeps the port and loses the data.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

from ._process import HOST, ServerProcess, free_port, wait_until


class RedisServer:
    """A private redis-server on 127.0.0.1, started at once.

    Raises:
        RuntimeError: redis-server is not installed, or did not start.
    """

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run scripts/install-test-deps")
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="sb-redis-"))
        self.port = free_port()
        self.proc: ServerProcess | None = None
        self.start()

    @property
    def url(self) -> str:
        """The ``redis://`` URL of the server."""
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers ``PING``."""
        self.proc = ServerProcess(
            "redis", [self.binary, "--port", str(self.port), "--bind", HOST, "--save", "",
                      "--appendonly", "no", "--dir", str(self.dir), "--protected-mode", "no"],
            port=self.port, health=None, log_dir=self.dir)

        def pong() -> bool:
            try:
                return self.command("PING") == "+PONG"
            except OSError:
                assert self.proc is not None
                if self.proc.proc.poll() is not None:
                    raise RuntimeError(self.proc.log()) from None
                return False

        try:
            wait_until(pong, 10, "redis-server answering PING")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (SIGTERM to its PID, then wait)."""
        if self.proc is not None:
            self.proc.stop(timeout=10)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port: every key is lost."""
        self.stop()
        self.start()

    def command(self, *args: str) -> str:
        """Send one inline command with a simple reply (``PING``, ``FLUSHALL``); return it."""
        with socket.create_connection((HOST, self.port), timeout=5) as s:
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
