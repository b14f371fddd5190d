"""The per-process bridge: the WSGI side's handle on the loop the engine runs on.

The loop a bridge runs on is one of two, chosen when it is made:

- its own (``Bridge(settings)``): one event loop in one native thread, created anywhere
  (nothing starts before ``start()``): gunicorn's ``post_worker_init`` starts it after
  fork, or the first request does (checked by pid, so ``preload_app`` is safe), and
  ``worker_exit`` stops it. The bridge builds its stream service on that loop;
- a loop that already runs (``Bridge.on_running_loop(service, glue)``): an ASGI server's,
  with a service built and started on it by its owner (the hybrid front). Nothing
  starts or stops a thread; ``aclose`` ends its streams on that loop.

A WSGI server that runs the loop itself hands its bridge to the Flask extension in
each request's environ (``LOOP_BRIDGE``), so the app's own bridge stays untouched.
Every queue hop a bridge uses is in ``_seam.py`` and ``_frames.py``; see the design
block in ``_seam.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from async_core import (
    AgentRegistry,
    FinishHook,
    Outcome,
    Settings,
    Streamable,
    StreamService,
    StreamSession,
    cancel_and_wait,
)
from async_core.wire import Event

from ._frames import FramesQueue, WSGIBody, make_frames_queue, pump
from ._glue import Signal, ThreadGlue, detect_glue, native_sqlite_threads
from ._seam import JanusRunner

log = logging.getLogger("streambridge.legacy")
T = TypeVar("T")
LOOP_BRIDGE = "streambridge.bridge"  # environ key: the bridge of the server's own loop
_BRIDGES: weakref.WeakSet[Bridge] = weakref.WeakSet()


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
        self._sockets: set[asyncio.Task[None]] = set()  # WebSocket sessions (_websocket)
        self._start_lock = threading.Lock()
        self._start_error: BaseException | None = None
        self._own_thread = True
        _BRIDGES.add(self)

    @classmethod
    def on_running_loop(cls, service: StreamService, glue: ThreadGlue) -> Bridge:
        """A bridge on the loop that runs now, streaming for ``service`` (built on it).

        Call it on that loop (an ASGI server's lifespan start-up). The bridge starts no
        thread and owns neither the loop nor the service: its owner closes the service;
        ``aclose`` ends the bridge's streams and waits for its sync agents. It is not
        in ``bridges()`` (the gunicorn hooks of the legacy path do not stop it).

        Args:
            service: the started stream service its streams are admitted by.
            glue: runs the sync agents (the same ``ThreadGlue`` as ``service``'s runner).
        """
        bridge = cls(service.settings, path=service.path)
        _BRIDGES.discard(bridge)
        bridge._own_thread = False
        bridge._loop, bridge._glue, bridge._service = asyncio.get_running_loop(), glue, service
        bridge._pid = os.getpid()
        return bridge

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start this process's loop thread (idempotent; restarts after a fork).

        Raises:
            RuntimeError: a bridge on a running loop used in a forked child.
        """
        if self._pid == os.getpid():
            return
        if not self._own_thread:
            raise RuntimeError("a bridge on a running loop cannot follow a fork")
        with self._start_lock:  # nothing in here blocks or switches greenlets
            if self._pid == os.getpid():
                return
            glue = detect_glue(self._max_agents)
            self._glue, self._ready, self._stopped = glue, Signal(glue), Signal(glue)
            self._loop = glue.new_loop()
            self._pumps, self._sockets = set(), set()
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

    @property
    def glue(self) -> ThreadGlue:
        """This process's blocking primitives (starts the loop if needed)."""
        self.start()
        assert self._glue is not None
        return self._glue

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
        self._stop_requested = asyncio.Event()
        self._start_error = None
        try:
            # Inside the try: a bad STREAMBRIDGE_AGENTS module raises here, and start()
            # must hear of it (it waited forever for _ready, every route hung).
            self._service = StreamService(
                self.settings, path=self.path,
                registry=self._registry,  # type: ignore[arg-type]
                sync_runner=JanusRunner(self._glue), hooks=self._hooks, form="sync")
            if self._glue.gevent:
                native_sqlite_threads(self._glue)
            await self._service.start()  # the store's engine belongs to this loop
        except BaseException as error:
            self._start_error = error
            self._ready.set()
            return
        self._ready.set()
        await self._stop_requested.wait()
        await self._end_streams(self.settings.policy.send_timeout or 5.0)
        await self._service.aclose()  # every final transcript is flushed before exit

    async def _end_streams(self, grace: float) -> None:
        """End whatever still streams (in-band, now), close the WebSockets (1001), and
        wait up to ``grace`` for the pumps."""
        assert self._service is not None
        self._service.lifecycle.begin_drain(0.0)
        await self._close_sockets()
        if self._pumps:
            await asyncio.wait(set(self._pumps), timeout=grace)

    async def aclose(self, grace: float) -> bool:
        """On the bridge's loop: end its streams and wait for its sync agents.

        For a bridge on a running loop (``on_running_loop``), at its owner's shutdown;
        a bridge with its own thread is stopped with ``stop`` instead.

        Returns:
            True when every sync agent finished within ``min(2 s, grace)``.
        """
        if self._service is None or self._glue is None:
            return True
        await self._end_streams(grace)
        return await asyncio.to_thread(self._glue.join_agents, min(2.0, grace))

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

    def run_task(self, coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``coro()`` as a task on the loop until it ends or the bridge stops (then
        it is cancelled); from any thread."""
        def start() -> None:
            task = asyncio.get_running_loop().create_task(coro())
            self._sockets.add(task)
            task.add_done_callback(self._sockets.discard)

        self.on_loop(start)

    async def _close_sockets(self) -> None:
        for task in list(self._sockets):  # each closes its socket (1001) and its streams
            await cancel_and_wait(task)

    def close_sockets(self) -> None:
        """Close every WebSocket this process serves (1001), once streams have drained:
        gunicorn then need not wait its graceful timeout for their threads or greenlets."""
        # Nothing to do without sockets: no round trip to a loop that may be busy.
        if self._sockets and self._service is not None and self._pid == os.getpid():
            self.call(self._close_sockets)

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
        """Stop the loop thread: end streams, close queues and loop, wait for agents.

        A bridge on a running loop has no thread to stop (True): see ``aclose``.
        """
        if (not self._own_thread or self._pid != os.getpid() or self._loop is None
                or self._glue is None):
            return True
        self.on_loop(lambda: self._stop_requested.set())
        stopped = self._stopped.wait(timeout)
        agents = self._glue.join_agents(min(2.0, timeout))
        self._glue.retire_idle_agents()
        self._pid = None
        log.info("loop thread %s, agents %s (pid %s)", "stopped" if stopped else "DID NOT STOP",
                 "finished" if agents else "STILL RUNNING", os.getpid())
        return stopped and agents

    # -- streams --------------------------------------------------------------------

    def stream(self, session: Streamable) -> WSGIBody:
        """Start pumping ``session``'s frames and return the WSGI body that reads them."""
        assert self._glue is not None
        frames = make_frames_queue(self._glue)
        self.on_loop(self._start_pump, session, frames)
        return WSGIBody(self, session, frames)

    def _start_pump(self, session: Streamable, frames: FramesQueue) -> None:
        task = asyncio.get_running_loop().create_task(pump(session, frames))
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)

    async def collect(self, session: StreamSession) -> list[Event]:
        """Run a buffered (``stream: false``) session to its end and finish it."""
        try:
            return await session.collect()
        finally:
            await session.finish(Outcome.CLIENT_DISCONNECTED)


def bridges() -> list[Bridge]:
    """Every bridge created in this process (for the gunicorn hooks)."""
    return list(_BRIDGES)
