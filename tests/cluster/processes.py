"""Real processes of the cluster tests: a private redis-server and ``celery worker``s.

Every process is started in its own session on loopback (``async_core.harness``),
found ready by polling (never by sleeping), and stopped or SIGKILLed by its PID.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

from async_core.harness import ServerProcess
from tests.servers import REPO

# Short leases so that a killed producer is swept within about a second.
FAST_LEASES = {"STREAMBRIDGE_LEASE_TTL": "1", "STREAMBRIDGE_LEASE_RENEW": "0.3",
               "STREAMBRIDGE_SWEEP_INTERVAL": "0.2", "STREAMBRIDGE_REDIS_BLOCK": "0.5",
               "STREAMBRIDGE_REDIS_SOCKET_TIMEOUT": "2", "STREAMBRIDGE_REDIS_RETRY": "0.05"}


class CeleryWorker(ServerProcess):
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
        full_env = {"SB_TEST_BROKER_URL": broker_url,
                    "STREAMBRIDGE_REDIS_URL": log_url, "PYTHONUNBUFFERED": "1",
                    **FAST_LEASES, **(env or {})}
        cmd = [sys.executable, "-m", "celery", "-A", "tests.cluster.celery_app", "worker",
               "-Q", queue, "--pool", "threads", "--concurrency", "4", "--loglevel", "INFO",
               "--without-gossip", "--without-mingle", "--without-heartbeat",
               "--hostname", f"sbtest-{os.getpid()}-{time.monotonic_ns()}@localhost"]
        super().__init__("celery", cmd, env=full_env, cwd=REPO, listen=None)
        try:
            self.wait_log(" ready.", timeout=60)
        except BaseException:
            self.kill()
            raise

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

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGTERM) -> int:
        """Warm shutdown (SIGTERM), then SIGKILL if it hangs."""
        return super().stop(timeout, sig)
