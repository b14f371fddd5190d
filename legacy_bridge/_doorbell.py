"""One doorbell per event loop: cross-thread calls into it, one self-pipe write per pass."""

from __future__ import annotations

import asyncio
import collections
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


def doorbell(loop: asyncio.AbstractEventLoop) -> Doorbell:
    """The doorbell of ``loop`` (made on first use; any thread may call)."""
    bell = _DOORBELLS.get(loop)
    if bell is None:  # setdefault is one dict operation: two threads get the same bell
        bell = _DOORBELLS.setdefault(loop, Doorbell(loop))
    return bell
