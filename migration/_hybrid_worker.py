"""The hybrid front's gunicorn worker class (``migration.hybrid.HybridWorker``, named by
``migration/hybrid_gunicorn_conf.py``): uvicorn-worker's, with the timeouts it leaves unset."""

from __future__ import annotations

from typing import Any

from uvicorn_worker import UvicornWorker

from async_core import Settings
from async_core.read_timeout import read_timeout_protocol


class HybridWorker(UvicornWorker):
    """gunicorn's uvicorn worker, with uvicorn's graceful timeout set (uvicorn#2094)
    and a bound on the time to send a request (``STREAMBRIDGE_REQUEST_READ_TIMEOUT``).

    uvicorn-worker leaves ``timeout_graceful_shutdown`` unset (wait forever), so a
    stream that never ends would hold the worker until gunicorn's SIGKILL. The drain
    runs first (``drain_grace`` + 1 s); uvicorn then gets what is left of gunicorn's
    ``graceful_timeout`` minus a margin for the lifespan shutdown.
    """

    CONFIG_KWARGS: dict[str, Any] = {"loop": "asyncio", "http": "auto", "lifespan": "on"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = Settings.from_env()
        self.config.timeout_graceful_shutdown = max(
            1, int(self.cfg.graceful_timeout - settings.drain_grace - 3))
        self.config.http = read_timeout_protocol(settings.request_read_timeout)
        # /v1/ws: protocol pings at the heartbeat interval (async_core/_ws.py)
        heartbeat = settings.policy.heartbeat
        self.config.ws_ping_interval = heartbeat if heartbeat != float("inf") else None
        self.config.ws_per_message_deflate = False  # as async_core/_serve.py, and why
