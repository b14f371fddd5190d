"""Native agent threads that are kept for the next sync agent (gthread workers)."""

from __future__ import annotations

import _thread
from collections.abc import Callable
from typing import Any

AgentTarget = Callable[[], None]


class _Slot:
    """An idle agent thread: ``job`` is handed over, then ``wake`` released."""

    __slots__ = ("job", "wake")

    def __init__(self, allocate_lock: Callable[[], Any]) -> None:
        self.job: AgentTarget | None = None
        self.wake = allocate_lock()
        self.wake.acquire()


class AgentThreads:
    """Native daemon threads for sync agents, kept for the next agent when one finishes.

    The caller is the loop thread. ``threading.Thread.start`` makes it wait until the
    new thread runs, which under a burst means until the new thread won the GIL from
    every other runnable one: measured at 100 ms of time-to-first-chunk for 30 streams
    opened at once, and under 500 at once the loop spent most of a second starting
    agent threads one by one (py-spy; issue 10, "Load"). A new thread is therefore
    started with ``_thread.start_new_thread``, which returns at once; and a finished
    agent's thread waits ``idle_s`` for the next agent (the warmest first), so a warm
    worker hands an agent over with one lock release. Such threads are daemons (an
    agent stuck in upstream I/O must not block interpreter exit) and are not listed by
    ``threading.enumerate``.
    """

    def __init__(self, allocate_lock: Callable[[], Any], idle_s: float = 30.0) -> None:
        self._allocate_lock, self._idle_s = allocate_lock, idle_s
        self._lock = allocate_lock()  # guards _idle; never held while waiting
        self._idle: list[_Slot] = []

    def run(self, job: AgentTarget) -> None:
        """Run ``job`` on an idle thread, or on a new one."""
        with self._lock:
            slot = self._idle.pop() if self._idle else None
        if slot is None:
            _thread.start_new_thread(self._work, (job,))
            return
        slot.job = job
        slot.wake.release()

    def retire_idle(self) -> None:
        """Make every idle thread exit."""
        with self._lock:
            idle, self._idle = self._idle, []
        for slot in idle:
            slot.job = None
            slot.wake.release()

    def _work(self, job: AgentTarget | None) -> None:
        slot = _Slot(self._allocate_lock)
        while job is not None:
            job()
            job = slot.job = None
            with self._lock:
                self._idle.append(slot)
            if not slot.wake.acquire(True, self._idle_s):
                with self._lock:
                    try:
                        self._idle.remove(slot)
                        return  # nobody took us: retire
                    except ValueError:
                        pass  # taken just now: its release is coming
                slot.wake.acquire()
            job = slot.job
