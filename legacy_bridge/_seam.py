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
#   No polling and no sleeps: every hop blocks or awaits. Each hop moves a batch: the
#   reader takes the first item blocking, then what is already queued with get_nowait
#   (the engine coalesces agent items into one delta; the body joins frames into one write).
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
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeAlias

import janus
from janus import (
    AsyncQueueEmpty,
    AsyncQueueFull,
    AsyncQueueShutDown,
    SyncQueueEmpty,
    SyncQueueShutDown,
)

from async_core import AgentEnd, Outcome, StreamSession
from async_core._sources import Batch
from async_core.agents import AgentItem, AgentRequest
from async_core.exceptions import Overloaded, StreamBridgeError

from ._glue import GeventGlue, HybridCondition, Signal, ThreadGlue

log = logging.getLogger("streambridge.legacy")
FRAME_QUEUE = 16


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
    """janus.Queue that wakes its async side with one callback instead of a new Task.

    janus runs every sync-to-async notification (a ``put`` while the engine awaits
    ``get``) as ``call_soon_threadsafe`` + a Task that takes the async mutex: three
    loop iterations and a Task per token (measured by scripts/bench_legacy.py). In
    the callback, on the queue's loop, the mutex is almost always free: take it
    without waiting, notify, release. Only if taking it would wait does janus' Task
    do the work, so the lock discipline of janus' conditions is unchanged.
    """

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
    """janus.Queue whose sync side uses a native mutex and hybrid conditions (see _glue)."""

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


class CancelSignal:
    """The ``CancelToken`` of one sync agent run: set when its stream is over."""

    def __init__(self, glue: ThreadGlue) -> None:
        self._signal = Signal(glue)
        self._lock = glue.allocate_lock()  # guards _callbacks; never held while waiting
        self._callbacks: list[Callable[[], object]] = []

    def is_set(self) -> bool:
        return self._signal.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._signal.wait(timeout)

    def add_callback(self, fn: Callable[[], object]) -> None:
        with self._lock:
            if not self._signal.is_set():
                self._callbacks.append(fn)
                return
        _call_quietly(fn)

    def set(self) -> None:
        with self._lock:
            callbacks, self._callbacks = self._callbacks, []
        self._signal.set()
        for fn in callbacks:
            _call_quietly(fn)


def _call_quietly(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:
        log.exception("cancel callback %r failed", fn)


class JanusSource:
    """A sync agent running on an agent worker, seen by the engine through agent_q."""

    def __init__(self, glue: ThreadGlue, fn: Callable[[AgentRequest], Iterator[AgentItem]],
                 request: AgentRequest, maxsize: int) -> None:
        self._q = _make_queue(glue, maxsize)
        self._failed: AgentEnd | None = None
        self._cancel = CancelSignal(glue)
        gen = fn(request.with_cancel(self._cancel))
        if not glue.spawn_agent(lambda: _run_agent(gen, self._q.sync_q)):
            gen.close()
            self._failed = AgentEnd(Overloaded("no agent worker is free in this process"))

    async def next_batch(self, deadline: float) -> Batch:
        if self._failed is not None:
            return [self._failed]
        aq = self._q.async_q
        try:
            first = aq.get_nowait()
        except AsyncQueueEmpty:
            try:
                async with asyncio.timeout_at(deadline):
                    first = await aq.get()
            except TimeoutError:
                return []
            except AsyncQueueShutDown:
                return [AgentEnd()]
        except AsyncQueueShutDown:
            return [AgentEnd()]
        batch: Batch = []
        item: Any = first
        while True:
            if isinstance(item, _AgentFailed):
                batch.append(AgentEnd(item.error))
                break
            if item is not _WAKE:
                batch.append(item)
            try:
                item = aq.get_nowait()
            except AsyncQueueEmpty:
                break
            except AsyncQueueShutDown:
                batch.append(AgentEnd())
                break
        return batch

    def wake(self) -> None:
        with contextlib.suppress(AsyncQueueFull, AsyncQueueShutDown):
            self._q.async_q.put_nowait(_WAKE)

    async def aclose(self) -> None:
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

    def __init__(self, bridge: _OnLoop, session: StreamSession, frames: janus.Queue[Any]) -> None:
        self._bridge, self._session, self._frames = bridge, session, frames
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
            chunks = [q.get()]
        except SyncQueueShutDown:  # EOF: the terminal frame was read
            self._done = True
            raise StopIteration from None
        if isinstance(chunks[0], _FailedBeforeFirstByte):
            self._done = True
            raise chunks[0].error
        try:
            while True:
                chunks.append(q.get_nowait())
        except (SyncQueueEmpty, SyncQueueShutDown):
            pass
        for _ in chunks:
            with contextlib.suppress(ValueError, SyncQueueShutDown):
                q.task_done()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close(self) -> None:
        """Called by the WSGI server at the end, or when a write failed (client gone)."""
        if self._done:
            return
        self._done = True
        self._q.shutdown(immediate=True)  # the pump's put raises at once
        self._bridge.on_loop(self._session.abort, Outcome.CLIENT_DISCONNECTED)


FramesQueue: TypeAlias = janus.Queue[Any]


def make_frames_queue(glue: ThreadGlue) -> FramesQueue:
    """A new frames_q (engine -> WSGI body) for one stream."""
    return _make_queue(glue, FRAME_QUEUE)


async def pump(session: StreamSession, frames: janus.Queue[Any]) -> None:
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
        async with asyncio.timeout(send_timeout):
            await fq.join()
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
