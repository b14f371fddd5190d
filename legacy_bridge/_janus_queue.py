# design: the one module of streambridge that uses janus: a bounded queue between one
# asyncio loop and threads or greenlets, read in batches, on janus' documented API only.
# - janus holds the batches and owns the end: we call only janus.Queue(maxsize), the
#   put_nowait/get_nowait of sync_q (threads, greenlets) and async_q (the loop), shutdown
#   and aclose, and catch only the exceptions janus exports. shutdown() is an EOF (the
#   reader still takes what is queued) or, immediate, a stop (what is queued is dropped).
# - Batches: janus holds lists. A put appends to the open batch (the one janus holds,
#   not yet taken) or, when there is none, puts a new one; a get takes the whole batch.
#   So janus never holds more than one (maxsize=1: Full from janus means "a batch is
#   queued"); the item bound (maxsize) is counted here. A reader that fell behind takes
#   everything in one hop, and a put that joins a batch costs one list append: per-item
#   janus calls cost the unpaced stream half its throughput (scripts/bench_legacy.py).
# - Every wait is ours: nothing ever blocks or awaits inside janus. A caller that must
#   wait (full on put, empty on get, the writer waiting for the reader to take all)
#   parks on this queue's own native lock: a thread or greenlet on a HybridCondition
#   (_glue), a coroutine on a loop future. One reader and one writer at a time.
# - Who wakes whom: the put that opens a batch wakes the reader (a put that joins one
#   finds nobody waiting: a reader waits only while nothing is queued); a get wakes
#   the writer. From the loop a future is resolved directly and a thread/greenlet
#   notified through its condition; from a thread or greenlet a future is resolved
#   through the loop's doorbell (_doorbell: one self-pipe write per loop pass for every
#   stream). A future taken to be woken is cleared under the lock: never rung twice.
#   (janus' own sync-to-async wake-up is a call_soon_threadsafe and a Task per put,
#   5-15x a plain queue, janus#419; ours is a future's set_result.)
# - Remaining assumptions about janus beyond its documentation, each pinned against the
#   installed version by tests/legacy_bridge/test_janus_assumptions.py:
#   A1 a *_nowait call returns or raises Full/Empty/ShutDown without waiting, and it
#      schedules nothing on the loop while nobody awaits janus' own coroutines (ours
#      never do). Buys: the wake-ups above are the only ones (no janus Task per batch),
#      and aclose() costs one loop pass.
#   A2 under gevent's monkey-patching janus' internal lock is a greenlet lock. We call
#      janus only while holding our native lock, so it is never contended, and an
#      uncontended gevent lock may be taken and released from the native loop thread
#      (which has no hub). Buys: janus runs unchanged under gunicorn -k gevent; no
#      primitive of it is replaced after construction.
#   A3 put_nowait raises ShutDown, not Full, on a full queue that was shut down; a get
#      after shutdown() still returns what is queued, then raises ShutDown; immediate
#      drops it. Buys: janus is the one authority on "ended" (EOF, disconnect, stop).
# - Invariant: nobody blocks, awaits or switches greenlets while holding the lock (it is
#   native: a greenlet taking it blocks the hub for a short critical section).
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
Wait = asyncio.Future[None]
_SYNC = (SyncQueueFull, SyncQueueEmpty, SyncQueueShutDown)
_ASYNC = (AsyncQueueFull, AsyncQueueEmpty, AsyncQueueShutDown)


class QueueShutDown(Exception):
    """The queue was shut down: the end of the stream (EOF), or a stop."""


def _resolve(fut: Wait | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


def _ring(fut: Wait | None) -> None:
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
    ``drained``, ``aclose``) for the one loop the queue binds to. ``shutdown`` works
    from anywhere.

    Args:
        glue: the worker's blocking primitives (native lock, thread or greenlet waits).
        maxsize: items the queue holds before a put waits.
    """

    __slots__ = ("_ended", "_interrupted", "_items", "_lock", "_maxsize", "_open", "_q",
                 "_readable", "_reader", "_writable", "_writer", "eof")

    def __init__(self, glue: ThreadGlue, maxsize: int) -> None:
        self._q: Queue[list[T]] = Queue(1)  # at most one batch: see the design block
        self._maxsize, self._items = maxsize, 0
        self._open: list[T] | None = None  # the batch janus holds, while nobody took it
        self._lock = glue.allocate_lock()
        self._readable = HybridCondition(self._lock, glue)  # a sync reader waits here
        self._writable = HybridCondition(self._lock, glue)  # a sync writer waits here
        self._reader: Wait | None = None  # the async reader's wait
        self._writer: Wait | None = None  # the async writer's wait
        self._interrupted = self._ended = False
        self.eof = False  # public: the last batch taken ended at the shutdown

    # -- sync face (threads, greenlets) -------------------------------------------------

    def put(self, item: T) -> None:
        """Put ``item``, blocking while the queue is full.

        Raises:
            QueueShutDown: the queue was shut down (before or while waiting).
        """
        with self._lock:
            while True:
                done, reader = self._put(item, self._q.sync_q, _SYNC)
                if done:
                    break
                self._writable.wait()
        _ring(reader)

    def get_batch(self) -> list[T]:
        """Everything queued, blocking until there is something.

        Raises:
            QueueShutDown: the queue was shut down and nothing is left to read.
        """
        with self._lock:
            while True:
                batch, writer = self._take(self._q.sync_q, _SYNC)
                if batch:
                    break
                self._readable.wait()
        _ring(writer)
        return batch

    # -- async face (coroutines on the queue's loop) ------------------------------------

    def try_put(self, item: T) -> bool:
        """Put ``item`` if there is room; False if the queue is full.

        Raises:
            QueueShutDown: the queue was shut down.
        """
        with self._lock:
            done, reader = self._put(item, self._q.async_q, _ASYNC)
        _resolve(reader)
        return done

    async def aput(self, item: T) -> None:
        """Put ``item``, waiting while the queue is full.

        Raises:
            QueueShutDown: the queue was shut down (before or while waiting).
        """
        while True:
            with self._lock:
                done, reader = self._put(item, self._q.async_q, _ASYNC)
                if not done:
                    fut = self._writer = asyncio.get_running_loop().create_future()
            if done:
                _resolve(reader)
                return
            await self._park(fut)

    def get_batch_nowait(self) -> list[T]:
        """Everything queued, possibly ``[]``; see ``eof``.

        Raises:
            QueueShutDown: the queue was shut down and nothing is left to read.
        """
        with self._lock:
            batch, writer = self._take(self._q.async_q, _ASYNC)
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
                batch, writer = self._take(self._q.async_q, _ASYNC)
                if batch or interrupted:
                    break
                fut = self._reader = asyncio.get_running_loop().create_future()
            await self._park(fut)
        _resolve(writer)
        return batch

    def interrupt(self) -> None:
        """Make a pending ``aget_batch`` return now (the next one, if none is pending)."""
        with self._lock:
            self._interrupted = True
            reader, self._reader = self._reader, None
        _resolve(reader)

    async def drained(self) -> None:
        """Wait until the reader took everything (or the queue was shut down at once)."""
        while True:
            with self._lock:
                if not self._items:
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
            self._open, self._ended = None, True  # no put joins a batch now: janus' raises
            if immediate:
                self._items = 0
            self._readable.notify_all()
            self._writable.notify_all()
            reader, self._reader = self._reader, None
            writer, self._writer = self._writer, None
        _ring(reader)  # from any thread, the loop's own included
        _ring(writer)

    # -- internals (the lock is held) ---------------------------------------------------

    def _put(self, item: T, face: BaseQueue[list[T]],
             exc: tuple[type[Exception], ...]) -> tuple[bool, Wait | None]:
        """Join the open batch or open one; (False, None) if full; else the reader to wake."""
        batch = self._open
        if batch is not None and self._items < self._maxsize:
            batch.append(item)  # a reader waits only while nothing is queued: nobody to wake
            self._items += 1
            return True, None
        try:
            face.put_nowait(batch := [item])  # Full: the one batch is queued, and full
        except exc[0]:
            return False, None
        except exc[2]:
            raise QueueShutDown from None
        self._open = batch
        self._items += 1
        self._readable.notify()
        reader, self._reader = self._reader, None
        return True, reader

    def _take(self, face: BaseQueue[list[T]],
              exc: tuple[type[Exception], ...]) -> tuple[list[T], Wait | None]:
        """The queued batch (``[]`` if none) and the async writer to wake."""
        try:
            batch = face.get_nowait()
        except exc[1]:
            return [], None
        except exc[2]:
            raise QueueShutDown from None
        self._open = None
        self._items -= len(batch)
        self.eof = self._ended  # ended before this take: that was everything
        self._writable.notify()
        writer, self._writer = self._writer, None
        return batch, writer

    async def _park(self, fut: Wait) -> None:
        try:
            await fut
        finally:
            with self._lock:
                if self._reader is fut:
                    self._reader = None
                elif self._writer is fut:
                    self._writer = None
