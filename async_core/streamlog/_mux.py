"""One blocking reader per process: every followed key in one ``XREAD BLOCK``.

The reader owns one dedicated connection (a blocking read on a shared connection
starves every other command: PITFALLS, lobehub#17876), whose socket timeout sits above
the block time (redis-py's default breaks long blocks). N live subscriptions cost one
connection, not N. When the set of followed keys changes while the read is blocked,
``CLIENT UNBLOCK`` (sent on the command connection) ends the block at once and the
loop reads again with the new keys. On a lost connection the reader reconnects and
reads on from the last id of every key, and tells its owner (``on_reconnect``) so that
streams whose log was lost meanwhile are reset rather than silently gapped.

Limit: one ``XREAD`` may only name keys of one Redis Cluster slot; on a Cluster, run
one reader per shard (not done yet: the backend targets one Redis or a primary).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

Flat = list[bytes]  # an entry's fields as Redis sends them: [field, value, ...]
Handler = Callable[[list[tuple[bytes, Flat]]], None]
LOST = (RedisConnectionError, RedisTimeoutError, OSError)
log = logging.getLogger("streambridge.streamlog")


def raw_reply(response: Any, **_options: Any) -> Any:
    """A response callback that keeps a reply as Redis sent it."""
    return response


def parse_xread(resp: Any) -> list[tuple[bytes, list[tuple[bytes, Flat]]]]:
    """Return a raw ``XREAD`` reply (RESP2: the backend pins ``protocol=2``) as a list.

    The reader's client keeps the reply as Redis sent it (``[key, [[id, [field,
    value]], ...]]``): redis-py's own callback builds a dict an entry, which the
    followers would only take apart again (a third of the reader's parsing, measured).
    """
    return [(key, entries) for key, entries in resp or ()]


class Multiplexer:
    """The process' one blocking reader.

    Args:
        make_client: builds the reader's dedicated client (socket timeout > block).
        command: the command client, used for ``CLIENT UNBLOCK`` only.
        block: seconds one ``XREAD BLOCK`` waits.
        retry: seconds between reconnection attempts.
        on_lost: called once per connection loss (the owner's degraded signal).
        on_reconnect: awaited after a reconnection, before reading on.
    """

    def __init__(self, make_client: Callable[[], aioredis.Redis], command: aioredis.Redis, *,
                 block: float, retry: float, on_lost: Callable[[BaseException], None],
                 on_reconnect: Callable[[], Awaitable[None]]) -> None:
        self._make_client = make_client
        self._command = command
        self._block_ms = max(1, int(block * 1000))
        self._retry = retry
        self._on_lost = on_lost
        self._on_reconnect = on_reconnect
        self.follows: dict[bytes, bytes] = {}  # key → last id read
        self._handlers: dict[bytes, Handler] = {}
        self._changed = asyncio.Event()
        self._gen = 0  # bumped on every change of the followed keys
        self._blocked_gen: int | None = None  # the generation the pending XREAD names
        self._client_id: int | None = None
        self._unblocking = False
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stale = False  # set when an outage began: reconnect before the next read
        self.reads = 0  # XREAD calls issued (for tests and the benchmark)

    def follow(self, key: bytes, from_id: bytes, handler: Handler) -> None:
        """Follow ``key`` from ``from_id`` (exclusive), passing new entries to ``handler``."""
        self.follows[key] = from_id
        self._handlers[key] = handler
        self._poke()

    def unfollow(self, key: bytes) -> None:
        """Stop following ``key`` (a stale key in a pending read is harmless)."""
        self.follows.pop(key, None)
        self._handlers.pop(key, None)

    def restart_key(self, key: bytes, from_id: bytes) -> None:
        """Read ``key`` again from ``from_id`` (after its log was recreated)."""
        if key in self.follows:
            self.follows[key] = from_id
            self._poke()

    def _poke(self) -> None:
        self._gen += 1
        self._changed.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if self._blocked_gen is not None and not self._unblocking:
            self._unblocking = True
            asyncio.get_running_loop().create_task(self._unblock())

    async def _unblock(self) -> None:
        try:
            # The XREAD may not have reached Redis yet: retry until it is unblocked or
            # the reader picked the new keys up by itself.
            for _ in range(200):
                if self._blocked_gen is None or self._blocked_gen == self._gen:
                    return
                if self._client_id is not None and await self._command.client_unblock(
                        self._client_id):
                    return
                await asyncio.sleep(0.002)
        except LOST:
            return  # the reader's own loop notices the outage
        finally:
            self._unblocking = False

    async def _run(self) -> None:
        client: aioredis.Redis | None = None
        lost = False
        try:
            while not self._closing:
                if not self.follows:
                    self._changed.clear()
                    await self._changed.wait()
                    continue
                if self.stale and client is not None:
                    # Made before an outage (this reader was idle through it): a new
                    # connection, and the epochs checked, as after a loss of its own.
                    await client.aclose()
                    client, lost = None, True
                try:
                    if client is None:
                        self.stale = False
                        client = self._make_client()
                        client.set_response_callback("XREAD", raw_reply)
                        self._client_id = int(await client.client_id())
                        if lost:
                            await self._on_reconnect()
                            lost = False
                    streams = dict(self.follows)
                    self._blocked_gen = self._gen
                    self.reads += 1
                    resp = await client.xread(streams, count=1000,  # type: ignore[arg-type]
                                              block=self._block_ms)
                except LOST as exc:
                    self._blocked_gen = None
                    if client is not None:
                        await client.aclose()
                        client = None
                    if not lost:
                        lost = True
                        self._on_lost(exc)
                    await asyncio.sleep(self._retry)
                    continue
                self._blocked_gen = None
                for key, entries in parse_xread(resp):
                    if key not in self.follows or not entries:
                        continue
                    self.follows[key] = entries[-1][0]
                    self._handlers[key](entries)
        finally:
            if client is not None:
                await client.aclose()

    async def aclose(self) -> None:
        """Stop the reader and close its connection."""
        # redis-py shields a command in flight from cancellation (CVE-2023-28858), so a
        # cancelled XREAD may come back normally: the loop also stops on `_closing`, and
        # CLIENT UNBLOCK ends the pending block at once.
        self._closing = True
        self._changed.set()
        task, self._task = self._task, None
        if task is None:
            return
        if self._blocked_gen is not None and self._client_id is not None:
            with contextlib.suppress(*LOST):
                await self._command.client_unblock(self._client_id)
        task.cancel()
        await asyncio.wait([task])
