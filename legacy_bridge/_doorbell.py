"""One doorbell per event loop: cross-thread calls into it, one self-pipe write per pass."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger("streambridge.legacy")


class Doorbell:
    """Cross-thread calls into one loop, coalesced into one ``call_soon_threadsafe``.

    ``call_soon_threadsafe`` writes a byte to the loop's self-pipe on every call (a
    syscall, and a GIL release and re-take, per token). Calls rung while a run is
    already scheduled join it: under load every stream's wake-ups of one loop pass
    cost one write. Order is kept (FIFO).
    """

    __slots__ = ("__weakref__", "_calls", "_loop", "_rung")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]] = (
            collections.deque())
        self._rung = False

    def ring(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop soon; safe from any thread."""
        self._calls.append((fn, args))
        if not self._rung:  # a scheduled run that has not started will see our call
            self._rung = True
            self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        self._rung = False  # before draining: a call appended from now on rings again
        calls = self._calls
        while calls:
            fn, args = calls.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("cross-thread call %r failed", fn)


_DOORBELLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Doorbell] = (
    weakref.WeakKeyDictionary())


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def resolve_soon(fut: asyncio.Future[None] | None) -> None:
    """Resolve ``fut`` (a wait on a loop) through its loop's doorbell; safe from any thread.

    A no-op for ``None``, and once the loop is closed (nobody waits any more).
    """
    if fut is None:
        return
    loop = fut.get_loop()
    if not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            doorbell(loop).ring(_resolve, fut)


def doorbell(loop: asyncio.AbstractEventLoop) -> Doorbell:
    """The doorbell of ``loop`` (made on first use; any thread may call)."""
    bell = _DOORBELLS.get(loop)
    if bell is None:  # setdefault is one dict operation: two threads get the same bell
        bell = _DOORBELLS.setdefault(loop, Doorbell(loop))
    return bell
