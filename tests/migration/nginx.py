"""A real nginx in front of a test server, running the shipped ``streambridge.conf``.

The shipped file is rendered, not rewritten: only the lines marked
``# streambridge:upstream``, ``# streambridge:listen`` and (optionally)
``# streambridge:read-timeout`` change. nginx runs in the foreground as our
subprocess, with its pid file, logs and temp paths under a temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tests.servers import REPO

CONF = REPO / "migration" / "nginx" / "streambridge.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def render(upstream_port: int, listen_port: int, read_timeout: str | None = None) -> str:
    """The shipped configuration with our ports (and read timeout) on the marked lines."""
    text = CONF.read_text(encoding="utf-8")
    subs = [(r"server 127\.0\.0\.1:\d+;(?=.*streambridge:upstream)",
             f"server 127.0.0.1:{upstream_port};"),
            (r"listen 127\.0\.0\.1:\d+;(?=.*streambridge:listen)",
             f"listen 127.0.0.1:{listen_port};")]
    if read_timeout is not None:
        subs.append((r"proxy_read_timeout \S+;(?=.*streambridge:read-timeout)",
                     f"proxy_read_timeout {read_timeout};"))
    for pattern, repl in subs:
        text, n = re.subn(pattern, repl, text)
        assert n == 1, f"marker for {pattern!r} found {n} times"
    return text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """nginx proxying to ``127.0.0.1:upstream_port`` with the shipped configuration."""

    def __init__(self, upstream_port: int, read_timeout: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sb-nginx-"))
        self.port = _free_port()
        (self.dir / "streambridge.conf").write_text(
            render(upstream_port, self.port, read_timeout), encoding="utf-8")
        user = "user root root;" if os.geteuid() == 0 else ""  # temp dirs are ours alone
        temps = "".join(f"{kind}_temp_path {self.dir}/{kind};"
                        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.dir / "nginx.conf").write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {self.dir}/access.log;
    {temps}
    include {self.dir}/streambridge.conf;
}}
""", encoding="utf-8")
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir),
             "-e", str(self.dir / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"nginx not ready:\n{self.error_log()}")

    def error_log(self) -> str:
        """What nginx logged."""
        path = self.dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Graceful stop (SIGQUIT) of the nginx master we started; SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
