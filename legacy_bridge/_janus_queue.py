# design: the one module of streambridge that uses janus: a bounded queue between one
# asyncio loop and threads or greenlets, read in batches, on janus' documented API only.
# - janus holds the queued batch and owns the end of the stream. We call janus.Queue(1),
#   put_nowait/get_nowait of sync_q (threads, greenlets) and async_q (the loop), shutdown
#   and wait_closed, and catch only janus' exported exceptions. shutdown() is an EOF (the
#   reader still takes what is queued) or, immediate, a stop (what is queued is dropped).
# - Batches: a put appends to the open batch (the one janus holds, not yet taken) or puts
#   a new one; a get takes the whole batch. So janus holds one batch at most (Full from
#   janus means "the batch is queued"), and the item bound (maxsize) is counted here. A
#   put that joins a batch is one list append, and a reader that fell behind takes all
#   in one hop (a janus call per item cost up to half the unpaced throughput, in two
#   bench_legacy.py runs).
# - Every wait is ours; nothing ever waits inside janus. A caller that must wait (full,
#   empty, or the writer waiting for the reader to take all) parks under this queue's
#   native lock: a thread or greenlet on a HybridCondition (_glue), a coroutine on a
#   loop future. One reader and one writer at a time.
# - Wake-ups: the put that opens a batch wakes the reader (one that joins a batch finds
#   nobody waiting: a reader waits only while nothing is queued); a get wakes the
#   writer. On the loop a future is resolved at once and a thread or greenlet notified
#   through its condition; off the loop a future is resolved through the loop's doorbell
#   (one self-pipe write per loop pass for every stream). A wait taken to be woken is
#   cleared under the lock: never rung twice. (janus' own sync-to-async wake-up is a
#   call_soon_threadsafe and a Task per put, 5-15x a plain queue: janus#419.)
# - Assumptions beyond janus' docs, each pinned against the installed version by
#   tests/legacy_bridge/test_janus_assumptions.py:
#   A1 a *_nowait call returns or raises Full/Empty/ShutDown without waiting and
#      schedules nothing on the loop while nobody awaits janus' coroutines (we never do).
#      Buys: our wake-ups are the only ones (no janus Task per batch); closing costs
#      one loop pass (wait_closed).
#   A2 under gevent's monkey-patching janus' lock is a greenlet lock. We call janus only
#      inside our native lock, so it is never contended, and an uncontended gevent lock
#      may be taken from the native loop thread (which has no hub). Buys: janus runs
#      unchanged under gunicorn -k gevent; nothing of it is replaced after construction.
#   A3 after shutdown() put_nowait raises ShutDown, even on a full queue; gets return
#      what is queued, then raise ShutDown; immediate drops it. Buys: janus is the one
#      authority on "ended" (EOF, disconnect, stop).
# - Invariant: nobody blocks, awaits or switches greenlets while holding the lock.
from __future__ import annotations

import asyncio
from typing import Generic, NamedTuple, TypeVar

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

from ._doorbell import resolve_soon
from ._glue import HybridCondition, ThreadGlue

T = TypeVar("T")
Wait = asyncio.Future[None]


class _Errors(NamedTuple):
    """What one face of janus raises."""

    full: type[Exception]
    empty: type[Exception]
    shut: type[Exception]


_SYNC = _Errors(SyncQueueFull, SyncQueueEmpty, SyncQueueShutDown)
_ASYNC = _Errors(AsyncQueueFull, AsyncQueueEmpty, AsyncQueueShutDown)


class QueueShutDown(Exception):
    """The queue was shut down: the end of the stream (EOF), or a stop."""


def _resolve(fut: Wait | None) -> None:
    """Resolve ``fut`` now (on its loop); ``resolve_soon`` does it from other threads."""
    if fut is not None and not fut.done():
        fut.set_result(None)


class SeamQueue(Generic[T]):
    """A bounded janus queue read in batches, with this seam's own waiting (see above).

    The sync face (``put``, ``get_batch``) is for threads and greenlets; the async face
    (``try_put``, ``aput``, ``get_batch_nowait``, ``aget_batch``, ``interrupt``,
    ``drained``, ``aclose``) for the one loop the queue binds to. ``shutdown`` works
    from anywhere. Puts raise :class:`QueueShutDown` once the queue was shut down, gets
    once it was and nothing is left to read.

    Args:
        glue: the worker's blocking primitives (native lock, thread or greenlet waits).
        maxsize: items the queue holds before a put waits.
    """

    __slots__ = ("_ended", "_interrupted", "_items", "_lock", "_maxsize", "_open", "_q",
                 "_reader", "_waiting", "_writer", "eof")

    def __init__(self, glue: ThreadGlue, maxsize: int) -> None:
        self._q: Queue[list[T]] = Queue(1)  # at most one batch: see the design block
        self._maxsize, self._items = maxsize, 0
        self._open: list[T] | None = None  # the batch janus holds, while nobody took it
        self._lock = glue.allocate_lock()
        # A sync reader waits here while nothing is queued, a sync writer while the queue
        # is full: never both at once, so the other side's notify() is always for it.
        self._waiting = HybridCondition(self._lock, glue)
        self._reader: Wait | None = None  # the async reader's wait
        self._writer: Wait | None = None  # the async writer's wait
        self._interrupted = self._ended = False
        self.eof = False  # public: the last batch taken ended at the shutdown

    # -- sync face (threads, greenlets) -------------------------------------------------

    def put(self, item: T) -> None:
        """Put ``item``, blocking while the queue is full."""
        with self._lock:
            while True:
                done, reader = self._put(item, self._q.sync_q, _SYNC)
                if done:
                    break
                self._waiting.wait()
        resolve_soon(reader)

    def get_batch(self) -> list[T]:
        """Everything queued, blocking until there is something."""
        with self._lock:
            while True:
                batch, writer = self._take(self._q.sync_q, _SYNC)
                if batch:
                    break
                self._waiting.wait()
        resolve_soon(writer)
        return batch

    # -- async face (coroutines on the queue's loop) ------------------------------------

    def try_put(self, item: T) -> bool:
        """Put ``item`` if there is room; False if the queue is full."""
        with self._lock:
            done, reader = self._put(item, self._q.async_q, _ASYNC)
        _resolve(reader)
        return done

    async def aput(self, item: T) -> None:
        """Put ``item``, waiting while the queue is full."""
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
        """Everything queued, possibly ``[]``; see ``eof``."""
        with self._lock:
            batch, writer = self._take(self._q.async_q, _ASYNC)
        _resolve(writer)
        return batch

    async def aget_batch(self) -> list[T]:
        """Everything queued, waiting until there is something; ``[]`` after ``interrupt()``."""
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
        """Shut down at once and close the janus queue, as janus asks (its ``aclose()``
        is ``shutdown(immediate=True)``, made here under our lock, then ``wait_closed()``)."""
        self.shutdown(immediate=True)
        await self._q.wait_closed()

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
            self._waiting.notify_all()
            reader, self._reader = self._reader, None
            writer, self._writer = self._writer, None
        resolve_soon(reader)  # from any thread, the loop's own included
        resolve_soon(writer)

    # -- internals (the lock is held) ---------------------------------------------------

    def _put(self, item: T, face: BaseQueue[list[T]],
             exc: _Errors) -> tuple[bool, Wait | None]:
        """Join the open batch or open one; (False, None) if full; else the reader to wake."""
        batch = self._open
        if batch is not None and self._items < self._maxsize:
            batch.append(item)  # a reader waits only while nothing is queued: nobody to wake
            self._items += 1
            return True, None
        try:
            face.put_nowait(batch := [item])  # Full: the one batch is queued, and full
        except exc.full:
            return False, None
        except exc.shut:
            raise QueueShutDown from None
        self._open = batch
        self._items += 1
        self._waiting.notify()
        reader, self._reader = self._reader, None
        return True, reader

    def _take(self, face: BaseQueue[list[T]],
              exc: _Errors) -> tuple[list[T], Wait | None]:
        """The queued batch (``[]`` if none) and the async writer to wake."""
        try:
            batch = face.get_nowait()
        except exc.empty:
            return [], None
        except exc.shut:
            raise QueueShutDown from None
        self._open = None
        self._items -= len(batch)
        self.eof = self._ended  # ended before this take: that was everything
        self._waiting.notify()
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
