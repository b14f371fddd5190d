"""A server subprocess on 127.0.0.1: started, found listening, found ready, stopped by PID.

Readiness is polled, never slept for: first the port in the server's log (gunicorn's
``Listening at: http://127.0.0.1:PORT (``, uvicorn's ``Uvicorn running on ... (``),
then a ``GET`` of the health route. uvicorn prints its line when it binds, before the
lifespan has run and before it listens, so a request sent on seeing the line alone
may be refused (found in CI). Each process gets a session of its own, so a stuck one
is SIGKILLed with its children (only processes we started).
"""

from __future__ import annotations

import os
import re
import signal as signals
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

HOST = "127.0.0.1"
# The listening line of gunicorn and uvicorn (and of the peer apps that copy it).
LISTEN = re.compile(r"(?:Uvicorn running on|Listening at:) http://127\.0\.0\.1:(\d+) \(")

T = TypeVar("T")


def free_port() -> int:
    """A loopback port free now (for servers that cannot bind port 0 and report it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str,
               interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns a truthy value; return it.

    Raises:
        TimeoutError: not within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(interval)


def http_ok(port: int, path: str = "/healthz", timeout: float = 2.0) -> bool:
    """Whether ``GET path`` on 127.0.0.1 ``port`` answers 200 (one raw HTTP/1.1 request)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                         "Connection: close\r\n\r\n".encode())
            return sock.recv(64).startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))
    except OSError:
        return False


def wait_healthy(port: int, path: str = "/healthz", timeout: float = 30.0) -> None:
    """Wait until ``GET path`` on ``port`` answers 200.

    Raises:
        TimeoutError: it did not within ``timeout`` seconds.
    """
    wait_until(lambda: http_ok(port, path), timeout, f"GET {path} on port {port} = 200",
               0.05)


class ServerProcess:
    """A subprocess serving HTTP on 127.0.0.1, its output in a log file.

    Args:
        name: what it is (log file prefix, error messages).
        cmd: the command line.
        env: environment on top of ``os.environ`` (``None`` values remove a variable).
        cwd: working directory.
        port: the port, when the command is given one; else it must print ``listen``.
        listen: the regex whose first group is the port, searched in the log (``None``
            with no ``port``: not a server, such as a worker; see ``wait_log``).
        health: the route polled for 200 (``None``: listening is ready enough).
        log_dir: where the log goes (default: a new temporary file, kept after stop).
        timeout: seconds to wait for the port and for readiness, each.

    Raises:
        RuntimeError: the process exited or did not get ready in time (it is killed).
    """

    _terminated = False  # a class default: subclasses may skip __init__

    def __init__(self, name: str, cmd: Sequence[str], *,
                 env: Mapping[str, str | None] | None = None, cwd: str | Path | None = None,
                 port: int | None = None, listen: re.Pattern[str] | None = LISTEN,
                 health: str | None = "/healthz", log_dir: Path | None = None,
                 timeout: float = 30.0) -> None:
        self.name = name
        if log_dir is None:
            fd, log_name = tempfile.mkstemp(prefix=f"sb-{name}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(log_name)
        else:
            self.log_path = log_dir / f"{name}.log"
        full_env = {**os.environ}
        for key, value in (env or {}).items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
        self.log_path.write_bytes(b"")
        # Appending: a test may add lines to the log of a running server (test_harness).
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(list(cmd), cwd=cwd, env=full_env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.port = 0
        self.base_url = ""
        if port is None and listen is None:
            return
        try:
            self.port = port or int(self.wait_log(listen or LISTEN, timeout).group(1))
            self.base_url = f"http://{HOST}:{self.port}"
            if health is not None:
                self._poll(lambda: http_ok(self.port, health), timeout, f"GET {health} = 200")
        except BaseException:
            self.kill()
            raise

    def wait_log(self, pattern: re.Pattern[str] | str, timeout: float = 30.0) -> re.Match[str]:
        """Wait until the log matches ``pattern`` (a regex); return the match.

        Raises:
            RuntimeError: the process exited first, or ``timeout`` seconds passed.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        return self._poll(lambda: regex.search(self.log()), timeout, f"log line {regex.pattern!r}")

    def _poll(self, predicate: Callable[[], T | None], timeout: float, what: str) -> T:
        def check() -> T | None:
            value = predicate()
            if not value and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.log()}")
            return value

        try:
            return wait_until(check, timeout, what)
        except TimeoutError as exc:
            raise RuntimeError(f"{self.name}: {exc}:\n{self.log()}") from None

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on this server."""
        return self.base_url + path

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_since(self, offset: int, *, whole_lines: bool = True) -> tuple[str, int]:
        """What the process printed from byte ``offset`` on (up to its last whole line
        unless ``whole_lines`` is false), and the offset after it."""
        with self.log_path.open("rb") as f:
            f.seek(offset)
            data = f.read()
        if whole_lines:
            data = data[:data.rfind(b"\n") + 1]
        return data.decode("utf-8", errors="replace"), offset + len(data)

    def signal(self, sig: int = signals.SIGTERM) -> None:
        """Send ``sig`` to the main process (if it still runs)."""
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; return its exit status."""
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the process group (only processes this process started)."""
        if self.proc.poll() is None:
            os.killpg(self.pid, signals.SIGKILL)
            self.proc.wait(timeout=10)

    @property
    def terminated(self) -> bool:
        """Whether :meth:`terminate` (or :meth:`stop`) has sent its signal."""
        return self._terminated

    def terminate(self, sig: int = signals.SIGTERM) -> None:
        """Send ``sig`` once (a second SIGTERM makes uvicorn skip its graceful shutdown)."""
        if not self._terminated:
            self._terminated = True
            self.signal(sig)

    def stop(self, timeout: float = 30.0, sig: int = signals.SIGTERM) -> int:
        """``terminate`` (unless done), wait, then SIGKILL if needed; the exit status."""
        try:
            self.terminate(sig)
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode
