"""ASGI ``receive()`` helpers of the hybrid front: replay a read body, hear a disconnect.

The front reads a chat request's body itself (the flag needs the agent and the
conversation), so each branch gets a ``receive`` that first replays those
messages. For the Flask branch, ``DisconnectWatch`` also keeps listening once the
body is in (a WSGI app never does: a2wsgi#48) and calls back whoever registered
through ``on_disconnect`` — from any thread, since Flask views run in WSGI threads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from async_core import cancel_and_wait

log = logging.getLogger("streambridge.hybrid")
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
DISCONNECT: Message = {"type": "http.disconnect"}


def replay(messages: Iterable[Message], receive: Receive) -> Receive:
    """A ``receive`` that returns ``messages`` first, then reads ``receive``."""
    pending = deque(messages)

    async def replaying() -> Message:
        if pending:
            return pending.popleft()
        return await receive()

    return replaying


def _body_complete(message: Message) -> bool:
    return message["type"] != "http.request" or not message.get("more_body", False)


class DisconnectWatch:
    """Owns one request's ``receive()``: serves the body, then watches for the client leaving.

    Args:
        receive: the server's ``receive``.
        prefetched: messages the front already read (replayed first).
    """

    def __init__(self, receive: Receive, prefetched: list[Message]) -> None:
        self._real = receive
        self._pending = deque(prefetched)
        self._lock = threading.Lock()  # callbacks are added from WSGI threads
        self._callbacks: list[Callable[[], object]] = []
        self._left = asyncio.Event()
        self.disconnected = False
        self._task: asyncio.Task[None] | None = None
        if any(m["type"] == "http.disconnect" for m in prefetched):
            self._fire()
        elif any(_body_complete(m) for m in prefetched):
            self._start()

    async def receive(self) -> Message:
        """The branch's ``receive``: the body, then (only) ``http.disconnect``."""
        if self._pending:
            return self._pending.popleft()
        if self._task is None and not self.disconnected:  # the body is still arriving
            message = await self._real()
            if message["type"] == "http.disconnect":
                self._fire()
            elif _body_complete(message):
                self._start()
            return message
        await self._left.wait()
        return DISCONNECT

    def on_disconnect(self, fn: Callable[[], object]) -> None:
        """Call ``fn()`` when the client leaves (at once if it has). Any thread."""
        with self._lock:
            if not self.disconnected:
                self._callbacks.append(fn)
                return
        _call(fn)

    async def aclose(self) -> None:
        """Stop watching (the response is over); forget the callbacks."""
        with self._lock:
            self._callbacks.clear()
        if self._task is not None:
            await cancel_and_wait(self._task)

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._real())["type"] != "http.disconnect":
            pass  # nothing else may arrive after the body; keep waiting for the end
        self._fire()

    def _fire(self) -> None:
        with self._lock:
            self.disconnected = True
            callbacks, self._callbacks = self._callbacks, []
        self._left.set()
        for fn in callbacks:
            _call(fn)


def _call(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:
        log.exception("disconnect callback %r failed", fn)
