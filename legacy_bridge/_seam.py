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
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import janus
from janus import (
    AsyncQueueEmpty,
    AsyncQueueFull,
    AsyncQueueShutDown,
    SyncQueueEmpty,
    SyncQueueShutDown,
)

from async_core import AgentEnd, AgentRegistry, Outcome, Settings, StreamService, StreamSession
from async_core._engine import FinishHook
from async_core._sources import Batch
from async_core.agents import AgentItem, AgentRequest
from async_core.exceptions import Overloaded, StreamBridgeError
from async_core.wire import Event

from ._glue import GeventGlue, HybridCondition, Signal, ThreadGlue, detect_glue

log = logging.getLogger("streambridge.legacy")
T = TypeVar("T")
_BRIDGES: weakref.WeakSet[Bridge] = weakref.WeakSet()
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


class WSGIBody:
    """The WSGI response iterable of one stream: reads frames_q, joins what is queued."""

    def __init__(self, bridge: Bridge, session: StreamSession, frames: janus.Queue[Any]) -> None:
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


class Bridge:
    """The per-process bridge between WSGI workers and the engine's event loop.

    Create it anywhere (nothing starts before ``start()``); every WSGI-side method
    may be called from any request thread or greenlet.

    Args:
        settings: policy and limits of the stream service.
        registry: the agents (default: built-in plus ``settings.agents``).
        hooks: finish hooks (persistence, webhooks) for every stream.
        path: the label for ``X-Stream-Path`` and metrics.
        max_agents: sync agents running at once (default: one per stream slot and per
            buffered slot, so admission, not this pool, is what refuses requests).
    """

    def __init__(self, settings: Settings, *, registry: AgentRegistry | None = None,
                 hooks: tuple[FinishHook, ...] = (), path: str = "legacy",
                 max_agents: int | None = None) -> None:
        self.settings, self._registry, self._hooks, self.path = settings, registry, hooks, path
        self._max_agents = max_agents or ((settings.max_streams or 1024) + settings.max_buffered)
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._glue: ThreadGlue | None = None
        self._service: StreamService | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._start_lock = threading.Lock()
        self._start_error: BaseException | None = None
        _BRIDGES.add(self)

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start this process's loop thread (idempotent; restarts after a fork)."""
        if self._pid == os.getpid():
            return
        with self._start_lock:  # nothing in here blocks or switches greenlets
            if self._pid == os.getpid():
                return
            glue = detect_glue(self._max_agents)
            self._glue, self._ready, self._stopped = glue, Signal(glue), Signal(glue)
            self._loop = glue.new_loop()
            self._pumps = set()
            glue.start_thread(self._thread_main, self._loop)
            self._ready.wait()
            if self._start_error is not None:  # e.g. bad database or webhook settings
                raise self._start_error
            self._pid = os.getpid()
        log.info("loop thread started (pid %s, %s workers)", os.getpid(),
                 "gevent" if glue.gevent else "thread")

    @property
    def service(self) -> StreamService:
        """The stream service on this process's loop (starts the loop if needed)."""
        self.start()
        assert self._service is not None
        return self._service

    def _thread_main(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.run_until_complete(self._main())
            loop.run_until_complete(loop.shutdown_asyncgens())
        except BaseException:
            log.exception("the bridge's event loop crashed")
        finally:
            loop.close()
            self._stopped.set()

    async def _main(self) -> None:
        assert self._glue is not None
        self._service = StreamService(
            self.settings, path=self.path, registry=self._registry,  # type: ignore[arg-type]
            sync_runner=JanusRunner(self._glue), hooks=self._hooks, prefer_sync=True)
        self._stop_requested = asyncio.Event()
        self._start_error = None
        try:
            if self._glue.gevent:
                _native_sqlite_threads(self._glue)
            await self._service.start()  # the store's engine belongs to this loop
        except BaseException as error:
            self._start_error = error
            self._ready.set()
            return
        self._ready.set()
        await self._stop_requested.wait()
        self._service.lifecycle.begin_drain(0.0)  # whatever still runs ends now, in-band
        if self._pumps:
            await asyncio.wait(self._pumps, timeout=self.settings.policy.send_timeout or 5.0)
        await self._service.aclose()  # every final transcript is flushed before exit

    def on_loop(self, fn: Callable[..., object], *args: Any) -> None:
        """Schedule ``fn(*args)`` on the loop from any thread (no-op once it closed)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(fn, *args)

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` on the loop; block this thread or greenlet for the result.

        Raises:
            Whatever the coroutine raised (``StreamBridgeError`` for the client).
        """
        self.start()
        assert self._glue is not None
        assert self._loop is not None
        done, box = Signal(self._glue), []

        def run() -> None:
            task = asyncio.get_running_loop().create_task(fn(*args))  # type: ignore[arg-type]
            task.add_done_callback(lambda t: (box.append(t), done.set()))

        self._loop.call_soon_threadsafe(run)
        done.wait()
        return box[0].result()  # type: ignore[no-any-return]

    def begin_drain(self) -> None:
        """Start the drain (SIGTERM): not ready, no new streams, running ones get the grace."""
        if self._service is not None:
            self.on_loop(self._service.lifecycle.begin_drain)

    def wait_drained(self, within: float) -> bool:
        """Block until no stream runs (True) or ``within`` seconds pass (False)."""
        if self._service is None or self._pid != os.getpid():
            return True
        return self.call(self._service.lifecycle.wait_drained, within)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the loop thread: end streams, close queues and loop, wait for agents."""
        if self._pid != os.getpid() or self._loop is None or self._glue is None:
            return True
        self.on_loop(lambda: self._stop_requested.set())
        stopped = self._stopped.wait(timeout)
        agents = self._glue.join_agents(min(2.0, timeout))
        self._pid = None
        log.info("loop thread %s, agents %s (pid %s)", "stopped" if stopped else "DID NOT STOP",
                 "finished" if agents else "STILL RUNNING", os.getpid())
        return stopped and agents

    # -- streams --------------------------------------------------------------------

    def stream(self, session: StreamSession) -> WSGIBody:
        """Start pumping ``session``'s frames and return the WSGI body that reads them."""
        assert self._glue is not None
        frames = _make_queue(self._glue, FRAME_QUEUE)
        self.on_loop(self._start_pump, session, frames)
        return WSGIBody(self, session, frames)

    def _start_pump(self, session: StreamSession, frames: janus.Queue[Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._pump(session, frames))
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)

    async def _pump(self, session: StreamSession, frames: janus.Queue[Any]) -> None:
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

    async def collect(self, session: StreamSession) -> list[Event]:
        """Run a buffered (``stream: false``) session to its end and finish it."""
        try:
            return await session.collect()
        finally:
            await session.finish(Outcome.CLIENT_DISCONNECTED)


def _native_sqlite_threads(glue: ThreadGlue) -> None:
    """Under gevent, give aiosqlite a native thread and queue (it talks to the loop thread).

    aiosqlite runs each connection in a ``threading.Thread`` fed by a
    ``queue.SimpleQueue``; after ``patch_all`` both are greenlet-based and must not be
    shared with the native loop thread (gevent#2013). The C ``_queue.SimpleQueue`` and
    the original ``start_new_thread`` are native; results come back through
    ``loop.call_soon_threadsafe`` (our loop's self-pipe is native too, see _glue).
    """
    import _queue

    import aiosqlite.core

    start = glue.start_thread

    class NativeThread:
        def __init__(self, target: Callable[..., None], args: tuple[Any, ...] = ()) -> None:
            self._target, self._args = target, args

        def start(self) -> None:
            start(self._target, *self._args)

    aiosqlite.core.Thread = NativeThread  # type: ignore[attr-defined,misc]
    aiosqlite.core.SimpleQueue = _queue.SimpleQueue  # type: ignore[attr-defined,misc]


def bridges() -> list[Bridge]:
    """Every bridge created in this process (for the gunicorn hooks)."""
    return list(_BRIDGES)
