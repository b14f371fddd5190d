# design: the one module of streambridge that uses janus: a bounded queue between one
# asyncio loop and threads or greenlets, read in batches, on janus' documented API only.
# - What janus does here: the storage, the bound (maxsize counts items), the shutdown
#   semantics (an EOF that lets the reader take what is queued; an immediate stop that
#   drops it) and the loop check of its async side. We call only ``janus.Queue(maxsize)``,
#   ``sync_q``/``async_q`` ``put_nowait``/``get_nowait``/``qsize``, ``shutdown`` and
#   ``aclose``, and catch only the exceptions janus exports.
# - What this module does: every wait. Nothing ever blocks or awaits inside janus. A
#   caller that must wait (full on put, empty on get, the writer waiting for the reader
#   to take everything) parks on this queue's own native lock: a thread or greenlet on a
#   HybridCondition (_glue), a coroutine on a loop future. Each side has at most one
#   reader and one writer at a time, so one future per direction is enough.
# - Who wakes whom: a put wakes the reader, a get wakes the writer. From the loop a
#   waiting future is resolved directly and a thread/greenlet notified through its
#   condition; from a thread or greenlet a waiting future is resolved through the
#   loop's doorbell (_doorbell: one self-pipe write per loop pass for every stream). A
#   future, once taken to be woken, is cleared under the lock, so a reader already rung
#   is not rung again. (janus' own sync-to-async wake-up is a call_soon_threadsafe and a
#   Task per put, 5-15x a plain queue, janus#419; ours is a future's set_result.)
# - Batches: a get takes everything queued (one get_nowait per item, under one hold of
#   our lock), so a reader that fell behind takes it all in one hop.
# - Remaining assumptions about janus beyond its documentation, each pinned against the
#   installed version by tests/legacy_bridge/test_janus_assumptions.py:
#   A1 a *_nowait call returns or raises Full/Empty/ShutDown without waiting, and it
#      schedules nothing on the loop while nobody awaits janus' own coroutines (ours
#      never do). Buys: the doorbell wake-up above is the only one (no janus Task per
#      token), and aclose() costs one loop pass.
#   A2 under gevent's monkey-patching janus' internal lock is a greenlet lock. We call
#      janus only while holding our native lock, so that lock is never contended, and
#      an uncontended gevent lock may be taken and released from the native loop
#      thread (which has no hub). Buys: janus runs unchanged under gunicorn -k gevent,
#      with no primitive of it replaced after construction.
#   A3 shutdown() lets get_nowait drain what is queued before raising ShutDown;
#      shutdown(immediate=True) drops it, and put_nowait raises ShutDown after either.
#      (Documented by janus 2.0; pinned because EOF and disconnect both rest on it.)
# - Invariant: nobody blocks, awaits or switches greenlets while holding the lock (it is
#   a native lock: a greenlet taking it blocks the hub for a short critical section).
from __future__ import annotations

import asyncio
import contextlib
from typing import Generic, TypeVar

from janus import (
    AsyncQueueEmpty,
    AsyncQueueFull,
    AsyncQueueShutDown,
    BaseQueue,
    Queue,
    SyncQueueEmpty,
    SyncQueueFull,
    SyncQueueShutDown,
)

from ._doorbell import doorbell
from ._glue import HybridCondition, ThreadGlue

T = TypeVar("T")


class QueueShutDown(Exception):
    """The queue was shut down: the end of the stream (EOF), or a stop."""


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _ring(fut: asyncio.Future[None] | None) -> None:
    """Resolve ``fut`` on its loop from any thread or greenlet (no-op once it closed)."""
    if fut is None:
        return
    loop = fut.get_loop()
    if not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # closed meanwhile: nobody waits any more
            doorbell(loop).ring(_resolve, fut)


class SeamQueue(Generic[T]):
    """A bounded janus queue read in batches, with this seam's own waiting (see above).

    The sync face (``put``, ``get_batch``) is for threads and greenlets; the async face
    (``try_put``, ``aput``, ``get_batch_nowait``, ``aget_batch``, ``interrupt``,
    ``drained``, ``aclose``) for the one loop the queue binds to. ``shutdown`` works from anywhere.

    Args:
        glue: the worker's blocking primitives (native lock, thread or greenlet waits).
        maxsize: items the queue holds before a put waits.
    """

    __slots__ = ("_interrupted", "_lock", "_q", "_readable", "_reader", "_writable",
                 "_writer", "eof")

    def __init__(self, glue: ThreadGlue, maxsize: int) -> None:
        self._q: Queue[T] = Queue(maxsize)
        self._lock = glue.allocate_lock()
        self._readable = HybridCondition(self._lock, glue)  # a sync reader waits here
        self._writable = HybridCondition(self._lock, glue)  # a sync writer waits here
        self._reader: asyncio.Future[None] | None = None  # the async reader's wait
        self._writer: asyncio.Future[None] | None = None  # the async writer's wait
        self._interrupted = False
        self.eof = False  # public: the last batch taken ended at the shutdown

    # -- sync face (threads, greenlets) -------------------------------------------------

    def put(self, item: T) -> None:
        """Put ``item``, blocking while the queue is full.

        Raises:
            QueueShutDown: the queue was shut down (before or while waiting).
        """
        sync_q = self._q.sync_q
        with self._lock:
            while True:
                try:
                    sync_q.put_nowait(item)
                    break
                except SyncQueueFull:
                    self._writable.wait()
                except SyncQueueShutDown:
                    raise QueueShutDown from None
            self._readable.notify()
            reader, self._reader = self._reader, None
        _ring(reader)

    def get_batch(self) -> list[T]:
        """Everything queued, blocking until there is something.

        Raises:
            QueueShutDown: the queue was shut down and nothing is left to read.
        """
        with self._lock:
            while not (batch := self._take(self._q.sync_q, SyncQueueEmpty, SyncQueueShutDown)):
                self._readable.wait()
            self._writable.notify()
            writer, self._writer = self._writer, None
        _ring(writer)
        return batch

    # -- async face (coroutines on the queue's loop) ------------------------------------

    def try_put(self, item: T) -> bool:
        """Put ``item`` if there is room; False if the queue is full.

        Raises:
            QueueShutDown: the queue was shut down.
        """
        return self._try_put(item) is None

    async def aput(self, item: T) -> None:
        """Put ``item``, waiting while the queue is full.

        Raises:
            QueueShutDown: the queue was shut down (before or while waiting).
        """
        while (wait := self._try_put(item)) is not None:
            await self._park(wait)

    def get_batch_nowait(self) -> list[T]:
        """Everything queued, possibly ``[]``; see ``eof``.

        Raises:
            QueueShutDown: the queue was shut down and nothing is left to read.
        """
        with self._lock:
            batch = self._take(self._q.async_q, AsyncQueueEmpty, AsyncQueueShutDown)
            if batch:
                self._writable.notify()
                writer, self._writer = self._writer, None
        if batch and writer is not None:
            _resolve(writer)
        return batch

    async def aget_batch(self) -> list[T]:
        """Everything queued, waiting until there is something; ``[]`` after ``interrupt()``.

        Raises:
            QueueShutDown: the queue was shut down and nothing is left to read.
        """
        while True:
            with self._lock:
                interrupted, self._interrupted = self._interrupted, False
                batch = self._take(self._q.async_q, AsyncQueueEmpty, AsyncQueueShutDown)
                if batch or interrupted:
                    writer = None
                    if batch:
                        self._writable.notify()
                        writer, self._writer = self._writer, None
                    break
                fut = self._reader = asyncio.get_running_loop().create_future()
            await self._park(fut)
        if writer is not None:
            _resolve(writer)
        return batch

    def interrupt(self) -> None:
        """Make a pending ``aget_batch`` return now (the next one, if none is pending)."""
        with self._lock:
            self._interrupted = True
            reader, self._reader = self._reader, None
        if reader is not None:
            _resolve(reader)

    async def drained(self) -> None:
        """Wait until the reader took everything (or the queue was shut down at once)."""
        async_q = self._q.async_q
        while True:
            with self._lock:
                if not async_q.qsize():
                    return
                fut = self._writer = asyncio.get_running_loop().create_future()
            await self._park(fut)

    async def aclose(self) -> None:
        """Shut down at once and close the janus queue (as janus asks: ``aclose()``)."""
        self.shutdown(immediate=True)
        await self._q.aclose()

    # -- both ---------------------------------------------------------------------------

    def shutdown(self, immediate: bool = False) -> None:
        """End the queue: gets drain what is queued, then raise; puts raise at once.

        Args:
            immediate: drop what is queued: gets raise at once too (a stop, not an EOF).
        """
        with self._lock:
            self._q.shutdown(immediate)
            self._readable.notify_all()
            self._writable.notify_all()
            reader, self._reader = self._reader, None
            writer, self._writer = self._writer, None
        _ring(reader)  # from any thread, the loop's own included
        _ring(writer)

    # -- internals (the lock is held) ---------------------------------------------------

    def _take(self, face: BaseQueue[T], empty: type[Exception],
              shut: type[Exception]) -> list[T]:
        batch: list[T] = []
        get = face.get_nowait
        try:
            while True:
                batch.append(get())
        except empty:
            return batch
        except shut:
            if not batch:
                raise QueueShutDown from None
            self.eof = True
            return batch

    def _try_put(self, item: T) -> asyncio.Future[None] | None:
        """Put from the loop if there is room; if full, the future a get will resolve."""
        with self._lock:
            try:
                self._q.async_q.put_nowait(item)
            except AsyncQueueFull:
                fut = self._writer = asyncio.get_running_loop().create_future()
                return fut
            except AsyncQueueShutDown:
                raise QueueShutDown from None
            self._readable.notify()
            reader, self._reader = self._reader, None
        if reader is not None:
            _resolve(reader)
        return None

    async def _park(self, fut: asyncio.Future[None]) -> None:
        try:
            await fut
        finally:
            with self._lock:
                if self._reader is fut:
                    self._reader = None
                elif self._writer is fut:
                    self._writer = None
