"""The writer's connection: batches sent before the previous replies arrive.

One Redis connection of its own; ``send`` writes a batch's commands and returns at
once with a future of their replies; one reader task reads the replies in the order
the batches were written (Redis answers one connection in order) and resolves the
futures. ``RedisLog``'s writer bounds how many batches are in flight (``WINDOW``).

When the connection is lost, the batch being read and every batch after it fail with
the same error: Redis ran some prefix of what was written, never a later batch
without an earlier one (the append scripts skip ids they already have, and refuse a
gap, so the writer resends everything from the first failed batch in order).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from ._mux import LOST

WINDOW = 3  # batches in flight on the writer connection at most


class Window:
    """A connection on which batches are written without waiting for earlier replies.

    Args:
        connection: an unconnected ``redis.asyncio.Connection`` (connected on first use,
            and again after a loss).
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self._queue: deque[tuple[int, asyncio.Future[list[Any]]]] = deque()
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()  # a write, or a disconnect: never one under the other
        self._task: asyncio.Task[None] | None = None
        self.stale = False  # set when an outage began: reconnect before the next write

    async def send(self, commands: Sequence[Sequence[Any]]) -> asyncio.Future[list[Any]]:
        """Write ``commands`` now; return a future of their replies (errors as values).

        Raises:
            ConnectionError, TimeoutError, OSError: the write failed (nothing in flight
            after it is answered either: those futures fail with the same error).
        """
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._read())
        conn = self.connection
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        async with self._lock:
            if self.stale:  # made before an outage: Redis may have closed it meanwhile
                await self._lost(RedisConnectionError("connection from before an outage"))
            try:
                await conn.send_packed_command(conn.pack_commands(commands),
                                               check_health=False)
            except Exception as exc:  # noqa: BLE001 - any failure of the write is a loss
                lost = exc if isinstance(exc, LOST) else RedisConnectionError(repr(exc))
                await self._lost(lost)
                raise lost from None
            self._queue.append((len(commands), fut))
        self._ready.set()
        return fut

    async def _read(self) -> None:
        while True:
            await self._ready.wait()
            if not self._queue:
                self._ready.clear()
                continue
            count, fut = self._queue[0]
            replies: list[Any] = []
            try:
                for _ in range(count):
                    try:
                        replies.append(await self.connection.read_response())
                    except ResponseError as exc:  # an error reply: the next ones follow
                        replies.append(exc)
            except Exception as exc:  # noqa: BLE001 - the reader must outlive any loss
                async with self._lock:
                    await self._lost(exc if isinstance(exc, LOST)
                                     else RedisConnectionError(repr(exc)))
                continue
            self._queue.popleft()
            if not fut.done():
                fut.set_result(replies)

    async def _lost(self, exc: BaseException) -> None:
        """Fail every batch in flight with ``exc`` and drop the connection (locked)."""
        self.stale = False  # the next write connects anew
        while self._queue:
            _, fut = self._queue.popleft()
            if not fut.done():
                fut.set_exception(exc)
        await self.connection.disconnect(nowait=True)

    async def aclose(self) -> None:
        """Stop the reader and close the connection (batches in flight fail)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        async with self._lock:
            await self._lost(RedisConnectionError("the writer connection is closed"))
