"""Blocking primitives that work under plain threads (gthread) and under gevent.

The seam (``_seam.py``) needs four things from the worker it runs in: a native
thread for the asyncio loop, a way for a WSGI worker (thread or greenlet) to
block until the loop signals it, a bounded place to run sync agents, and locks
that both sides may take. Under ``gunicorn -k gthread`` the stdlib gives all of
them. Under ``-k gevent`` (``monkey.patch_all``) ``threading`` is greenlet-based
and must not be shared with a native thread (gevent#2013), so:

- the loop thread is started with the *original* ``_thread.start_new_thread``,
  with the original epoll selector and a native self-pipe (the patched ones need
  a hub in that thread: ``LoopExit``, measured in PITFALLS);
- locks are native (``get_original('_thread', 'allocate_lock')``), and
  ``HybridCondition`` lets a greenlet wait on its own hub through a per-wait
  ``hub.loop.async_()`` watcher whose ``send()`` is libev's thread-safe
  ``ev_async_send``: the loop thread touches no other gevent object;
- sync agents run as greenlets (so ``requests`` stays cooperative), spawned from
  the loop thread through ``hub.loop.run_callback_threadsafe``.

Invariant: nobody blocks or switches greenlets while holding a native lock, so a
greenlet taking one blocks the hub for the length of a short critical section.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Any

from ._threads import AgentTarget, AgentThreads


class _NativeWaiter:
    """One wait of a native thread: a pre-acquired lock, released to wake it."""

    __slots__ = ("_lock",)

    def __init__(self, allocate_lock: Callable[[], Any]) -> None:
        self._lock = allocate_lock()
        self._lock.acquire()

    def __call__(self) -> None:
        self._lock.release()

    def block(self, timeout: float | None) -> bool:
        return bool(self._lock.acquire(True, -1 if timeout is None else max(timeout, 0.0)))

    def close(self) -> None:
        pass


class _GreenletWaiter:
    """One wait of a greenlet: its hub sleeps until the async watcher fires.

    Watchers are kept in ``free`` (the hub thread's own list) for the next wait: a new
    libev watcher per token cost a visible share of the hub's time. ``ev_async_start``
    clears a send left over from the previous use, and ``stop`` clears a pending one.
    """

    __slots__ = ("_free", "_timeout", "_waiter", "_watcher")

    def __init__(self, hub: Any, waiter_cls: Any, timeout_cls: Any, free: list[Any]) -> None:
        self._waiter, self._timeout, self._free = waiter_cls(hub), timeout_cls, free
        self._watcher = free.pop() if free else hub.loop.async_()
        # Started before the mutex is released: libev drops sends made before start.
        self._watcher.start(self._waiter.switch, True)

    def __call__(self) -> None:
        self._watcher.send()  # ev_async_send: safe from any thread

    def block(self, timeout: float | None) -> bool:
        if timeout is None:
            return bool(self._waiter.get())
        with self._timeout(timeout, False):
            return bool(self._waiter.get())
        return False

    def close(self) -> None:  # with the mutex held: no send() can be in flight
        self._watcher.stop()
        if len(self._free) < _FREE_WATCHERS:
            self._free.append(self._watcher)
        else:
            self._watcher.close()


_FREE_WATCHERS = 1024


class HybridCondition:
    """A ``threading.Condition`` over a native mutex; waiters may be greenlets or threads.

    Waiters are few (one per queue side, per signal): a list, not a deque, since each
    stream holds two queues and an empty deque costs 632 bytes.

    Args:
        lock: a native lock (the condition's mutex).
        glue: makes the right waiter for the calling thread.
    """

    __slots__ = ("_glue", "_lock", "_waiters")

    def __init__(self, lock: Any, glue: ThreadGlue) -> None:
        self._lock, self._glue = lock, glue
        self._waiters: list[Any] = []

    def __enter__(self) -> bool:
        return bool(self._lock.acquire())

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Release the mutex, wait for a notify (or the timeout), re-acquire it."""
        waiter = self._glue.new_waiter()
        self._waiters.append(waiter)
        self._lock.release()
        woke = False
        try:
            woke = waiter.block(timeout)
        finally:
            self._lock.acquire()
            try:
                self._waiters.remove(waiter)  # still queued: timed out or interrupted
                woke = False
            except ValueError:  # a notify() took us; if we were interrupted, pass it on
                if not woke:
                    self.notify()
            waiter.close()
        return woke

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``predicate()`` is true (one wait per notify)."""
        result = predicate()
        while not result:
            if not self.wait(timeout):
                return predicate()
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters (the mutex must be held)."""
        while n > 0 and self._waiters:
            self._waiters.pop(0)()
            n -= 1

    def notify_all(self) -> None:
        """Wake every waiter (the mutex must be held)."""
        self.notify(len(self._waiters))


class Signal:
    """A one-shot event any thread may set and any thread or greenlet may wait for."""

    def __init__(self, glue: ThreadGlue) -> None:
        self._cond, self._flag = HybridCondition(glue.allocate_lock(), glue), False

    def set(self) -> None:
        with self._cond:
            self._flag = True
            self._cond.notify_all()

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            if not self._flag:
                self._cond.wait(timeout)
            return self._flag


class ThreadGlue:
    """Plain threads (``gunicorn -k gthread``, or no gunicorn at all).

    Args:
        max_agents: sync agents running at once in this process.
    """

    gevent = False

    def __init__(self, max_agents: int) -> None:
        import _thread

        self.allocate_lock: Callable[[], Any] = _thread.allocate_lock
        self._max_agents = max_agents
        self._count_lock = self.allocate_lock()
        self._running = 0
        self._idle = HybridCondition(self.allocate_lock(), self)
        self._threads = AgentThreads(self.allocate_lock)

    def new_waiter(self) -> Any:
        """A waiter for the calling thread (native here)."""
        return _NativeWaiter(self.allocate_lock)

    def new_loop(self) -> asyncio.AbstractEventLoop:
        """A new event loop for the loop thread."""
        return asyncio.SelectorEventLoop()

    def start_thread(self, fn: Callable[..., None], *args: Any) -> None:
        """Start a native daemon thread running ``fn(*args)``."""
        threading.Thread(target=fn, args=args, name="streambridge-loop", daemon=True).start()

    def spawn_agent(self, target: AgentTarget) -> bool:
        """Run ``target`` on an agent worker; False when all are busy. Any thread may call."""
        with self._count_lock:
            if self._running >= self._max_agents:
                return False
            self._running += 1
        try:
            self._launch(self._guarded(target))
        except BaseException:
            self._agent_done()
            raise
        return True

    def _launch(self, run: AgentTarget) -> None:
        self._threads.run(run)

    def retire_idle_agents(self) -> None:
        """End the agent threads that wait for work (at worker exit)."""
        self._threads.retire_idle()

    def _guarded(self, target: AgentTarget) -> AgentTarget:
        def run() -> None:
            try:
                target()
            finally:
                self._agent_done()
        return run

    def _agent_done(self) -> None:
        with self._count_lock:
            self._running -= 1
        with self._idle:
            self._idle.notify_all()

    @property
    def running_agents(self) -> int:
        """Sync agents running now."""
        return self._running

    def join_agents(self, timeout: float) -> bool:
        """Wait until no agent runs (they stop at their next put once queues shut down)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, timeout)


class GeventGlue(ThreadGlue):
    """Greenlets (``gunicorn -k gevent``, after ``monkey.patch_all``). See the module doc."""

    gevent = True

    def __init__(self, max_agents: int) -> None:
        import gevent
        from gevent import monkey
        from gevent.hub import Waiter, get_hub

        self.allocate_lock = monkey.get_original("_thread", "allocate_lock")
        self._ident = monkey.get_original("_thread", "get_ident")
        self._start = monkey.get_original("_thread", "start_new_thread")
        self._selector = monkey.get_original("selectors", "DefaultSelector")
        self._hub = get_hub()  # the worker's hub, in the thread that runs the greenlets
        self._hub_thread = self._ident()
        self._get_hub, self._waiter_cls, self._timeout_cls = get_hub, Waiter, gevent.Timeout
        self._spawn = gevent.spawn
        self._max_agents = max_agents
        self._count_lock = self.allocate_lock()
        self._running = 0
        self._idle = HybridCondition(self.allocate_lock(), self)
        self._free_watchers: list[Any] = []  # used by the hub thread only

    def new_waiter(self) -> Any:
        if self._ident() == self._hub_thread:
            return _GreenletWaiter(self._get_hub(), self._waiter_cls, self._timeout_cls,
                                   self._free_watchers)
        return _NativeWaiter(self.allocate_lock)

    def new_loop(self) -> asyncio.AbstractEventLoop:
        return _NativeSelfPipeLoop(self._selector())

    def start_thread(self, fn: Callable[..., None], *args: Any) -> None:
        self._start(fn, args)

    def retire_idle_agents(self) -> None:
        """Greenlets are not kept: nothing waits for work."""

    def _launch(self, run: AgentTarget) -> None:
        if self._ident() == self._hub_thread:
            self._spawn(run)
        else:  # from the loop thread: ask the hub to spawn it (thread-safe libev call)
            self._hub.loop.run_callback_threadsafe(self._spawn, run)


class _NativeSelfPipeLoop(asyncio.SelectorEventLoop):
    """asyncio's loop with an unpatched socketpair as its self-pipe (no hub needed)."""

    def _make_self_pipe(self) -> None:
        import _socket

        self._ssock, self._csock = _socket.socketpair()  # type: ignore[assignment]
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        self._internal_fds += 1  # type: ignore[attr-defined]
        self._add_reader(self._ssock.fileno(), self._read_from_self)  # type: ignore[attr-defined]


def detect_glue(max_agents: int) -> ThreadGlue:
    """Return the glue for this process: gevent's once ``threading`` is monkey-patched."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return GeventGlue(max_agents)
    return ThreadGlue(max_agents)


def native_sqlite_threads(glue: ThreadGlue) -> None:
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
