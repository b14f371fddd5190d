"""Real processes of the cluster tests: a private redis-server and ``celery worker``s.

Every process is started in its own session on loopback, found ready by polling
(never by sleeping), and stopped or SIGKILLed by its PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.servers import REPO

# Short leases so that a killed producer is swept within about a second.
FAST_LEASES = {"STREAMBRIDGE_LEASE_TTL": "1", "STREAMBRIDGE_LEASE_RENEW": "0.3",
               "STREAMBRIDGE_SWEEP_INTERVAL": "0.2", "STREAMBRIDGE_REDIS_BLOCK": "0.5",
               "STREAMBRIDGE_REDIS_SOCKET_TIMEOUT": "2", "STREAMBRIDGE_REDIS_RETRY": "0.05"}


class CeleryWorker:
    """A ``celery worker`` subprocess (threads pool) running ``tests.cluster.celery_app``.

    Args:
        broker_url: the Redis broker.
        log_url: the Redis stream log (``STREAMBRIDGE_REDIS_URL``).
        queue: the only queue it consumes (so a test knows which worker runs its task).
        env: more environment.
    """

    def __init__(self, broker_url: str, log_url: str, queue: str,
                 env: Mapping[str, str] | None = None) -> None:
        self.broker_url, self.queue = broker_url, queue
        self.log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix="sb-celery-", suffix=".log", delete=False)
        full_env = {**os.environ, "SB_TEST_BROKER_URL": broker_url,
                    "STREAMBRIDGE_REDIS_URL": log_url, "PYTHONUNBUFFERED": "1",
                    **FAST_LEASES, **(env or {})}
        cmd = [sys.executable, "-m", "celery", "-A", "tests.cluster.celery_app", "worker",
               "-Q", queue, "--pool", "threads", "--concurrency", "4", "--loglevel", "INFO",
               "--without-gossip", "--without-mingle", "--without-heartbeat",
               "--hostname", f"sbtest-{os.getpid()}-{time.monotonic_ns()}@localhost"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def enqueue(self, tenant: str, message: str = "hi", **options: Any) -> str:
        """Send one ``stream_agent`` task to this worker's queue; return its stream id.

        A connection of its own: the app's pool would keep a broker of an earlier module.
        """
        from tests.cluster.celery_app import app

        stream_id = uuid.uuid4().hex
        with app.connection_for_write(self.broker_url) as conn:
            app.send_task("sbtest.stream_agent", args=[stream_id, tenant, message, options],
                          queue=self.queue, connection=conn)
        return stream_id

    def log(self) -> str:
        """Everything the worker printed so far."""
        return Path(self.log_file.name).read_text(encoding="utf-8", errors="replace")

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"celery exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"celery worker not ready within {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the worker's process group (only what this test started)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it hangs; close the log."""
        try:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        finally:
            self.log_file.close()
