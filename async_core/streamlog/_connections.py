"""The Redis connections of one ``RedisLog``, made together and retired together.

Three kinds, each with one job: the command pool (``client``: scripts, reads, renewals),
the writer's own connection (``window``: batches sent without waiting for replies, see
``_window.py``) and the one blocking reader's (``mux``, see ``_mux.py``). When an
outage begins every connection made before it may be dead (a restarted Redis closed
it) and fail only when next used: ``retire`` marks the writer's and the reader's for a
reconnect before their next use and closes the pool's idle ones, so that no late
failure is counted as a new outage (``_health.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from ._mux import LOST, Multiplexer, raw_reply
from ._settings import LogSettings
from ._window import Window


class Connections:
    """The command pool, the writer's connection and the reader of one process's log.

    Args:
        settings: the log settings (``redis_url``, pool size, timeouts).
        owner: the process's id in leases (names the connections: ``CLIENT LIST``).
        on_lost: the reader lost Redis (``Health.degrade``).
        on_reconnect: the reader reached Redis again.
    """

    def __init__(self, settings: LogSettings, owner: str, *,
                 on_lost: Callable[[BaseException], None],
                 on_reconnect: Callable[[], Awaitable[None]]) -> None:
        timeouts: dict[str, Any] = {"socket_timeout": settings.redis_socket_timeout,
                    "socket_connect_timeout": min(5.0, settings.redis_socket_timeout),
                    "protocol": 2}
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=settings.redis_pool,
            timeout=settings.redis_socket_timeout, client_name=f"sb-{owner}", **timeouts)
        # Replies are bytes (decode_responses off); redis-py types them as unions.
        self.client: Any = aioredis.Redis(connection_pool=pool)
        # XRANGE replies as Redis sends them, [id, [event, data]] (as OPEN's page and the
        # multiplexer's XREAD): redis-py's callback built a dict an entry (resumes).
        self.client.set_response_callback("XRANGE", raw_reply)
        self.window = Window(pool.connection_class(
            **{**pool.connection_kwargs, "client_name": f"sb-{owner}-writer"}))
        self.mux = Multiplexer(lambda: aioredis.Redis.from_url(
            settings.redis_url, single_connection_client=True,
            client_name=f"sb-{owner}-reader", **timeouts),
            self.client, block=settings.redis_block, retry=settings.redis_retry,
            on_lost=on_lost, on_reconnect=on_reconnect)
        self._retiring: set[asyncio.Task[None]] = set()

    def retire(self) -> None:
        """An outage began: retire every connection made before it."""
        self.window.stale = self.mux.stale = True
        task = asyncio.get_running_loop().create_task(self._close_idle())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_idle(self) -> None:
        # The pool's idle connections (one in use fails by itself, in the outage).
        with contextlib.suppress(*LOST):
            await self.client.connection_pool.disconnect(inuse_connections=False)

    async def aclose(self) -> None:
        """Stop retiring, close the writer's, the reader's and the pool's connections."""
        for task in list(self._retiring):
            task.cancel()
        if self._retiring:
            await asyncio.wait(list(self._retiring))
        await self.window.aclose()
        await self.mux.aclose()
        await self.client.aclose(close_connection_pool=True)
