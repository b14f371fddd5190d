"""What a run costs and how its figures read: a process tree's CPU and memory, percentiles.

psutil (the ``[compare]`` extra) is imported when a ``ProcessTree`` is made, so the
rest of the harness imports without it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank (NaN if empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(values: Sequence[float], scale: float = 1.0) -> dict[str, float]:
    """``n``, ``p50``, ``p99``, ``max`` and ``mean`` of ``values`` times ``scale``
    (1000: seconds to ms); NaN figures when there are none."""
    def at(q: float) -> float:
        return percentile(values, q) * scale

    mean = sum(values) / len(values) * scale if values else math.nan
    return {"n": float(len(values)), "p50": at(0.5), "p99": at(0.99), "max": at(1.0),
            "mean": mean}


def thread_switches(pids: Sequence[int]) -> int:
    """Sum of ``voluntary_ctxt_switches`` over every live thread of ``pids`` (Linux).

    psutil's ``num_ctx_switches`` reads only the main thread's counters; a thread that
    has exited takes its counts with it (our servers keep their threads).
    """
    total = 0
    for pid in pids:
        for status in Path(f"/proc/{pid}/task").glob("*/status"):
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
            except (OSError, ValueError):
                continue  # the thread ended while we read
    return total


class ProcessTree:
    """A process and its children (gunicorn's arbiter and workers), measured together.

    Args:
        pid: the main process (the CLI execs gunicorn, so the PID stays).
        more: the other processes of a whole that needs several (a second server, a
            Celery worker), measured with it.
        children: measure the children too (``False``: this process alone).
        live: find the children anew at every reading (workers that come and go are
            counted); by default they are the ones there at construction, as a
            benchmark wants: a scan of ``/proc`` costs the measuring client milliseconds
            of CPU on a busy machine.
    """

    def __init__(self, pid: int, *more: int, children: bool = True, live: bool = False
                 ) -> None:
        import psutil

        self._psutil: Any = psutil
        self.roots = [psutil.Process(p) for p in (pid, *more)]
        self.children, self.live = children, live
        self._procs = self._scan()

    def _scan(self) -> list[Any]:
        procs: list[Any] = []
        for root in self.roots:
            try:
                procs += [root, *(root.children(recursive=True) if self.children else ())]
            except self._psutil.NoSuchProcess:
                continue
        return procs

    def procs(self) -> list[Any]:
        """The processes of the tree (``psutil.Process``; none once it has gone)."""
        return self._scan() if self.live else self._procs

    def cpu(self) -> float:
        """User + system CPU seconds of the tree so far (every thread of every process)."""
        total = 0.0
        for p in self.procs():
            try:
                t = p.cpu_times()
            except self._psutil.NoSuchProcess:
                continue
            total += t.user + t.system
        return total

    def rss(self) -> int:
        """Resident memory of the tree, in bytes."""
        total = 0
        for p in self.procs():
            try:
                total += int(p.memory_info().rss)
            except self._psutil.NoSuchProcess:
                continue
        return total

    def switches(self) -> int:
        """Voluntary context switches of every live thread of the tree so far."""
        return thread_switches([p.pid for p in self.procs()])

    def open_connections(self) -> int:
        """Established TCP connections held by the tree."""
        established = self._psutil.CONN_ESTABLISHED
        return sum(1 for p in self.procs() for c in p.net_connections("tcp")
                   if c.status == established)

    async def wait_idle(self, max_wait: float, name: str = "server") -> None:
        """Wait (bounded) until the tree holds no established TCP connection.

        Raises:
            RuntimeError: connections are still open after ``max_wait`` seconds.
        """
        deadline = time.monotonic() + max_wait
        while self.open_connections():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: connections still open after {max_wait} s")
            await asyncio.sleep(0.05)
