# design: the one sync<->async seam of streambridge; every janus queue lives in this module.
# - Ownership: each worker process owns ONE asyncio loop in ONE native thread, started after
#   fork (gunicorn's post_worker_init, or lazily by the first request, checked by pid; never
#   at import, so preload_app is safe) and stopped by Bridge.stop() at worker exit. The
#   stream service (admission, sessions, metrics) lives on that loop.
# - Per stream, two bounded janus queues:
#     agent_q  (sync agent -> engine):  the agent's worker blocks in agent_q.sync_q.put when
#              the engine is behind (backpressure reaches the upstream socket); the engine
#              awaits agent_q.async_q.get with its timers as the deadline.
#     frames_q (engine -> WSGI body):   the pump task awaits frames_q.async_q.put (a full
#              queue for longer than the send timeout ends the stream: send_timeout); the
#              WSGI body blocks in frames_q.sync_q.get.
#   No polling and no sleeps: every hop blocks or awaits. Each hop moves a batch, not a
#   token (_Queue): a put while the reader is behind appends to the last queued
#   batch, so one get takes everything queued (the engine coalesces those agent items
#   into one delta; the body joins those frames into one write). The bound counts items.
# - Wake-ups: a put that finds its reader waiting on the loop rings the loop's doorbell;
#   the puts of every stream that arrive during one pass of the loop share one self-pipe
#   write, and a queue whose reader was already rung is not rung again.
# - Disconnect: WSGI sees it only when a write fails; the server then calls body.close().
#   Heartbeats (non-empty bytes from the engine) are therefore the disconnect probe. close()
#   shuts frames_q down (the pump's put raises) and aborts the session on the loop; the
#   engine closes its source, agent_q.shutdown(immediate=True) makes the agent's blocked or
#   next put raise SyncQueueShutDown, and the runner closes the generator: its finally runs.
#   An agent that pauses between yields waits on its request's cancel token instead of
#   time.sleep (and may register a callback that closes its upstream response), so it
#   stops at once rather than at its next put.
# - Shutdown: SIGTERM starts the lifecycle's drain (streams get drain_grace, then a terminal
#   error "shutdown"); Bridge.stop() ends whatever is left, waits for the pumps (each one
#   aclose()s its queues), shuts async generators down, closes the loop, joins the thread.
# - gevent: _glue supplies native locks, a native loop thread and HybridCondition; janus'
#   sync-side primitives are swapped for them (_make_queue). Loop-side code must not use
#   run_in_executor/to_thread under gevent (those threads would be patched ones).
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol, TypeAlias

import janus
from janus import (
    AsyncQueueEmpty,
    AsyncQueueFull,
    AsyncQueueShutDown,
    SyncQueueShutDown,
)

from async_core import AgentEnd, Batch, Outcome, Streamable
from async_core.agents import AgentItem, AgentRequest
from async_core.exceptions import Overloaded, StreamBridgeError

from ._cancel import CancelSignal
from ._doorbell import doorbell
from ._glue import GeventGlue, HybridCondition, ThreadGlue

log = logging.getLogger("streambridge.legacy")
FRAME_QUEUE = 4  # frames (each a coalesced batch) queued for the body: what a stalled client pins
FAILURE_HANDOVER = 30.0  # seconds the body gets to read a failure when send_timeout is 0


class _AgentFailed:
    """Put into agent_q by the runner when the agent raised; always its last item."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_WAKE = object()  # put into agent_q by wake(): makes a pending get return


class _FailedBeforeFirstByte:
    """Put into frames_q when the stream failed before its first frame (an HTTP error)."""

    __slots__ = ("error",)

    def __init__(self, error: StreamBridgeError) -> None:
        self.error = error


class _Queue(janus.Queue[Any]):
    """janus.Queue with cheaper sync-to-async wake-ups and batched storage.

    Wake-ups: janus runs every sync-to-async notification (a ``put`` while the
    engine awaits ``get``) as ``call_soon_threadsafe`` + a Task that takes the async
    mutex: three loop iterations and a Task per token (measured by
    scripts/bench_legacy.py). Here the notification goes through the loop's doorbell
    (``_doorbell.py``); on the loop the mutex is almost always free: it is taken
    without waiting, the condition notified, the mutex released. Only if taking it
    would wait does janus' Task do the work, so the lock discipline of janus'
    conditions is unchanged. A not-empty notification already on its way is not
    sent again (each queue has one reader).

    Storage: items are kept in batches (lists). A put appends to the last queued
    batch, and ``get``/``get_nowait`` return a whole batch: a reader that fell
    behind takes everything in one hop. ``maxsize`` and ``qsize()`` count items, so
    backpressure is unchanged; ``task_done`` is owed once per batch.

    Relies on janus 2.0's storage hooks (``_init``/``_qsize``/``_put_internal``/
    ``_get``) and ``_notify_async``/``_setup_async_notifier``; setup.cfg pins
    ``janus>=2.0,<2.1`` for that reason and tests/legacy_bridge covers both.
    """

    def _init(self, maxsize: int) -> None:
        self._batches: collections.deque[list[Any]] = collections.deque()
        self._items = 0
        self._not_empty_rung = False

    def _qsize(self) -> int:
        return self._items

    def _put_internal(self, item: Any) -> None:
        batches = self._batches
        if batches:
            batches[-1].append(item)
        else:
            batches.append([item])
            self._unfinished_tasks += 1
        self._items += 1

    def _get(self) -> list[Any]:
        batch = self._batches.popleft()
        self._items -= len(batch)
        return batch

    def _notify_async(self, method: Callable[[], None]) -> None:
        # Called by janus with the sync mutex held.
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if method == self._async_not_empty.notify:
            if self._not_empty_rung:
                return
            self._not_empty_rung = True
            method = self._notify_not_empty
        doorbell(loop).ring(self._setup_async_notifier, loop, method)

    def _notify_not_empty(self) -> None:
        self._not_empty_rung = False  # first: a put from now on rings again
        self._async_not_empty.notify()

    def _setup_async_notifier(self, loop: asyncio.AbstractEventLoop,
                              method: Callable[[], None]) -> None:
        mutex = self._async_mutex
        if not mutex.locked():
            acquire = mutex.acquire()
            try:
                acquire.send(None)
            except StopIteration:  # taken without waiting
                try:
                    method()
                finally:
                    mutex.release()
                return
            acquire.close()  # it would have waited: leave it to janus' notifier Task
        super()._setup_async_notifier(loop, method)


class _GeventSafeQueue(_Queue):
    """_Queue whose sync side uses a native mutex and hybrid conditions (see _glue)."""

    def __init__(self, maxsize: int, glue: ThreadGlue) -> None:
        super().__init__(maxsize)
        mutex = glue.allocate_lock()
        self._sync_mutex = mutex
        self._sync_not_empty = HybridCondition(mutex, glue)  # type: ignore[assignment]
        self._sync_not_full = HybridCondition(mutex, glue)  # type: ignore[assignment]
        self._sync_tasks_done = HybridCondition(mutex, glue)  # type: ignore[assignment]


def _make_queue(glue: ThreadGlue, maxsize: int) -> janus.Queue[Any]:
    if isinstance(glue, GeventGlue):
        return _GeventSafeQueue(maxsize, glue)
    return _Queue(maxsize)


def _run_agent(gen: Iterator[AgentItem], q: janus.SyncQueue[Any]) -> None:
    """Runs on an agent worker (thread or greenlet): pushes the agent's items into agent_q."""
    try:
        for item in gen:
            q.put(item)  # blocks while full; raises SyncQueueShutDown once cancelled
        q.shutdown()  # EOF: the engine reads what is queued, then sees the end
    except SyncQueueShutDown:
        pass
    except Exception as error:  # the agent failed: tell the engine, in order
        with contextlib.suppress(SyncQueueShutDown):
            q.put(_AgentFailed(error))
            q.shutdown()
    finally:
        gen.close()  # GeneratorExit at the agent's yield: its finally closes upstream


class JanusSource:
    """A sync agent running on an agent worker, seen by the engine through agent_q."""

    def __init__(self, glue: ThreadGlue, fn: Callable[[AgentRequest], Iterator[AgentItem]],
                 request: AgentRequest, maxsize: int) -> None:
        self._q = _make_queue(glue, maxsize)
        self._failed: AgentEnd | None = None
        self._cancel = CancelSignal(glue)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = math.inf
        gen = fn(request.with_cancel(self._cancel))
        if not glue.spawn_agent(lambda: _run_agent(gen, self._q.sync_q)):
            gen.close()
            self._failed = AgentEnd(Overloaded("no agent worker is free in this process"))

    async def next_batch(self, deadline: float) -> Batch:
        if self._failed is not None:
            return [self._failed]
        aq = self._q.async_q
        try:
            items: list[Any] = aq.get_nowait()
        except AsyncQueueEmpty:
            # One timer per stream, re-armed only when the deadline moves earlier (an
            # asyncio.timeout per wait costs a TimerHandle and a cancel per token); one
            # that fires early makes this return [] and the engine waits again.
            if deadline < self._timer_when:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)
                self._timer_when = deadline
            try:
                items = await aq.get()
            except AsyncQueueShutDown:
                return [AgentEnd()]
        except AsyncQueueShutDown:
            return [AgentEnd()]
        batch: Batch = []
        while True:
            for item in items:
                if isinstance(item, _AgentFailed):
                    batch.append(AgentEnd(item.error))
                    return batch
                if item is not _WAKE:
                    batch.append(item)
            try:
                items = aq.get_nowait()
            except AsyncQueueEmpty:
                return batch
            except AsyncQueueShutDown:
                batch.append(AgentEnd())
                return batch

    def _on_timer(self) -> None:
        self._timer, self._timer_when = None, math.inf
        self.wake()

    def wake(self) -> None:
        with contextlib.suppress(AsyncQueueFull, AsyncQueueShutDown):
            self._q.async_q.put_nowait(_WAKE)

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._q.shutdown(immediate=True)  # a blocked or next put in the agent raises
        self._cancel.set()  # an agent waiting on its token (or reading upstream) stops now
        await self._q.aclose()


class JanusRunner:
    """The engine's ``SyncRunner`` for this process: sync agents behind agent_q."""

    def __init__(self, glue: ThreadGlue) -> None:
        self._glue = glue

    def start(self, fn: Callable[[AgentRequest], Iterator[AgentItem]], request: AgentRequest,
              maxsize: int) -> JanusSource:
        """Start ``fn(request)`` on an agent worker; called by the engine on the loop."""
        return JanusSource(self._glue, fn, request, maxsize)


class _OnLoop(Protocol):
    def on_loop(self, fn: Callable[..., object], *args: Any) -> None: ...


class WSGIBody:
    """The WSGI response iterable of one stream: reads frames_q, joins what is queued."""

    def __init__(self, bridge: _OnLoop, session: Streamable, frames: janus.Queue[Any]) -> None:
        self._bridge, self._frames = bridge, frames
        self.session = session  # public: the stream this body reads
        self._q = frames.sync_q
        self._done = False
        self._first: bytes | None = None

    def __iter__(self) -> WSGIBody:
        return self

    def first(self) -> None:
        """Block until the first frame (within ``header_hold``), so headers can wait for it.

        Raises:
            StreamBridgeError: the stream failed before its first byte: answer with it.
        """
        try:
            self._first = self.__next__()
        except StopIteration:
            self._first = b""

    def __next__(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        q = self._q
        try:
            chunks: list[Any] = q.get()  # a batch: every frame queued since the last read
        except SyncQueueShutDown:  # EOF: the terminal frame was read
            self._done = True
            raise StopIteration from None
        with contextlib.suppress(ValueError, SyncQueueShutDown):
            q.task_done()  # also for a failure: the pump's join() ends now (issue 10, item 8)
        if isinstance(chunks[0], _FailedBeforeFirstByte):
            self._done = True
            raise chunks[0].error
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def frames_on_loop(self) -> AsyncIterator[bytes]:
        """After ``first()``, the frames still to come, read on the loop (the hybrid front
        writes them from there); ``close()`` and the pump's send timeout apply as ever."""
        if self._first:
            yield self._first
        self._first, q = None, self._frames.async_q
        with contextlib.suppress(AsyncQueueShutDown):  # EOF: the terminal frame was read
            while chunks := await q.get():
                q.task_done()
                yield b"".join(chunks)
        self._done = True

    def close(self) -> None:
        """Called by the WSGI server at the end, or when a write failed (client gone)."""
        if self._done:
            return
        self._done = True
        self._q.shutdown(immediate=True)  # the pump's put raises at once
        self._bridge.on_loop(self.session.abort, Outcome.CLIENT_DISCONNECTED)


FramesQueue: TypeAlias = janus.Queue[Any]


def make_frames_queue(glue: ThreadGlue) -> FramesQueue:
    """A new frames_q (engine -> WSGI body) for one stream."""
    return _make_queue(glue, FRAME_QUEUE)


async def pump(session: Streamable, frames: janus.Queue[Any]) -> None:
    """Move ``session``'s frames into frames_q until its end, then finish the session.

    Runs on the loop, one task per stream. A full queue for longer than the send
    timeout ends the stream (``send_timeout``); a body closed by the server ends it
    as ``client_disconnected``; a failure before the first frame is handed to the
    body as an HTTP error.
    """
    fq = frames.async_q
    send_timeout = session.policy.send_timeout or None
    reason = Outcome.CLIENT_DISCONNECTED
    stream = session.frames()
    try:
        async for frame in stream:
            try:
                fq.put_nowait(frame)
            except AsyncQueueFull:  # the client is behind: wait, but not forever
                async with asyncio.timeout(send_timeout):
                    await fq.put(frame)
        frames.shutdown()  # EOF once the body has read what is queued
        async with asyncio.timeout(send_timeout):
            await fq.join()
    except StreamBridgeError as error:  # failed before the first byte: an HTTP error
        fq.put_nowait(_FailedBeforeFirstByte(error))
        frames.shutdown()
        # The body is already waiting in first(); it takes the error and answers. Wait
        # for that (the finally below would drop it), but not for longer than a send.
        try:
            async with asyncio.timeout(send_timeout or FAILURE_HANDOVER):
                await fq.join()
        except TimeoutError:
            log.info("stream %s: its error was not read in time", session.info.stream_id)
    except TimeoutError:
        reason = Outcome.SEND_TIMEOUT
        session.abort(reason)
    except AsyncQueueShutDown:
        reason = Outcome.CLIENT_DISCONNECTED  # the body was closed
        session.abort(reason)
    except asyncio.CancelledError:
        reason = Outcome.SHUTDOWN
        raise
    finally:
        await stream.aclose()
        frames.shutdown(immediate=True)
        await frames.aclose()
        await session.finish(reason)
