"""A real nginx in front of a test server, running the shipped ``streambridge.conf``.

The shipped file is rendered, not rewritten: only the lines marked
``# streambridge:upstream``, ``# streambridge:listen`` and (optionally)
``# streambridge:read-timeout`` change. nginx runs in the foreground as our
subprocess (an ``async_core.harness.ServerProcess``), with its pid file, logs and temp
paths under a temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

from async_core.harness import ServerProcess, free_port
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


class Nginx(ServerProcess):
    """nginx proxying to ``127.0.0.1:upstream_port`` with the shipped configuration.

    Ready when ``/healthz`` through it answers 200 (the upstream's answer).
    """

    def __init__(self, upstream_port: int, read_timeout: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sb-nginx-"))
        port = free_port()
        (self.dir / "streambridge.conf").write_text(
            render(upstream_port, port, read_timeout), encoding="utf-8")
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
        try:
            super().__init__("nginx", [NGINX, "-c", str(self.dir / "nginx.conf"), "-p",
                                       str(self.dir), "-e", str(self.dir / "error.log")],
                             port=port, log_dir=self.dir, timeout=15.0)
        except RuntimeError as exc:
            raise RuntimeError(f"nginx not ready:\n{self.error_log()}") from exc
        finally:
            if self.proc.poll() is not None:
                shutil.rmtree(self.dir, ignore_errors=True)

    def error_log(self) -> str:
        """What nginx logged."""
        path = self.dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGQUIT) -> int:
        """Graceful stop (SIGQUIT) of the nginx master we started; SIGKILL if it lingers."""
        try:
            return super().stop(timeout, sig)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
