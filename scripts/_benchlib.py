"""Shared pieces of the benchmarks: server processes measured as a whole tree.

``bench_engine.py`` owns the raw asyncio HTTP client (``StreamClient``,
``open_streams``, ``run_phase``...); ``bench_legacy.py`` reuses it as is. What
lives here is what that script lacks: a server started from any command line
(gunicorn or uvicorn), whose CPU and RSS are those of its whole process tree
(gunicorn's master plus its worker), and a client that walks away mid-stream.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
from bench_engine import HOST, Server, StreamClient, thread_switches

LISTEN = re.compile(rb"(?:Uvicorn running on|Listening at:) http://127\.0\.0\.1:(\d+) \(")
START_TIMEOUT = 30.0


class TreeServer(Server):
    """A server subprocess on an ephemeral loopback port, measured with its children.

    Args:
        name: the variant's name (log file name, messages).
        cmd: the command line; it must bind 127.0.0.1 port 0 and log the port.
        env: extra environment variables.
        log_dir: where its combined stdout/stderr goes.
    """

    LISTEN = LISTEN

    def __init__(self, name: str, cmd: Sequence[str], env: Mapping[str, str],
                 log_dir: Path, cwd: Path) -> None:
        super().__init__(name, log_dir)
        self.cmd, self.env, self.cwd = list(cmd), dict(env), cwd
        self._tree: list[psutil.Process] = []

    def command(self) -> list[str]:
        return self.cmd

    def popen_options(self) -> dict[str, Any]:
        return {"cwd": self.cwd, "env": {**os.environ, **self.env}}

    def started(self) -> None:
        assert self.ps is not None
        self._tree = [self.ps, *self.ps.children(recursive=True)]

    @property
    def worker_pids(self) -> list[int]:
        """PIDs of the processes under the one we started (gunicorn's worker)."""
        return [p.pid for p in self._tree[1:]]

    def cpu(self) -> float:
        """User + system CPU seconds of the whole tree (every thread of every process)."""
        total = 0.0
        for p in self._tree:
            with_times = p.cpu_times()
            total += with_times.user + with_times.system
        return total

    def switches(self) -> int:
        """Voluntary context switches of every live thread of the tree so far."""
        return thread_switches([p.pid for p in self._tree])

    def rss(self) -> int:
        """Resident set size of the whole tree in bytes."""
        return sum(int(p.memory_info().rss) for p in self._tree)

    def open_connections(self) -> int:
        """Established TCP connections held by the tree."""
        return sum(1 for p in self._tree for c in p.net_connections("tcp")
                   if c.status == psutil.CONN_ESTABLISHED)

    async def wait_idle(self, max_wait: float) -> None:
        """Wait (bounded) until the server holds no established TCP connection."""
        deadline = time.monotonic() + max_wait
        while self.open_connections():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: connections still open after {max_wait} s")
            await asyncio.sleep(0.05)


class LeavingClient(StreamClient):
    """A stream client that closes its connection after ``leave_after`` tokens.

    ``left_at`` is the wall time of the close (the agent's clock: same machine).
    """

    def __init__(self, request: bytes, leave_after: int) -> None:
        super().__init__(request, keep_lags=False)
        self.leave_after = leave_after
        self.left_at: float | None = None
        self.left: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.left_at is None and self.tokens >= self.leave_after:
            self.left_at = time.time()
            self.close()  # FIN, as a browser tab closing; the server sees it on a write
            self.left.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.left.done():
            self.left.set_result(None)


def read_agent_record(path: Path) -> tuple[list[float], float | None]:
    """Parse an agent's record: production times, and its ``finally`` time (or None)."""
    try:
        lines = path.read_text().split("\n")
    except FileNotFoundError:
        return [], None
    times: list[float] = []
    ended: float | None = None
    for line in lines:
        if line.startswith("end "):
            ended = float(line[4:])
        elif line.strip():
            times.append(float(line))
    return times, ended


def after_leaving(times: list[float], left_at: float) -> int:
    """Tokens the agent produced after its client left."""
    return sum(1 for t in times if t > left_at)


def gunicorn_cmd(python: str, app: str, extra: Sequence[str]) -> list[str]:
    """A bare gunicorn command line (1 worker, loopback, ephemeral port) for ``app``."""
    return [python, "-m", "gunicorn", "--no-control-socket", "--workers", "1",
            "--bind", f"{HOST}:0", "--backlog", "4096", "--timeout", "60",
            "--log-level", "info", *extra, app]


def summarize_counts(values: Sequence[Any]) -> str:
    """``min/median/max`` of small integers, for a table cell."""
    ordered = sorted(values)
    return f"{ordered[0]}/{ordered[len(ordered) // 2]}/{ordered[-1]}" if ordered else "-"


def _num(x: float) -> str:
    """A figure in at most 6 characters (``113k`` for large counts)."""
    return f"{x / 1e3:.0f}k" if abs(x) >= 1e4 else f"{x:.4g}"


def render_tables(fig: dict[str, dict[str, float]], ok: dict[str, dict[str, bool]],
                  variants: Sequence[str], product: Sequence[str], base_name: str,
                  title: str) -> str:
    """A figure table (value, and × the baseline) and a target table as text.

    Args:
        fig: ``{metric: {variant: value}}``; counts (agents, incomplete, client,
            tokens after) get no ratio.
        ok: ``{target: {variant: met}}`` for the ``product`` variants.
    """
    w = 15
    head = f"{'metric':<29}" + "".join(f"{v:>{w}}" for v in variants)
    lines = [head, "-" * len(head)]
    for metric, by in fig.items():
        cells = []
        for v in variants:
            x, base = by[v], by[base_name]
            ratio = f" {x / base:4.2f}x" if base and not metric.startswith(
                ("agents", "incomplete", "client", "tokens after")) and v != base_name else ""
            if metric.startswith("agents still"):
                cells.append(f"{int(x)}" + (" running" if x else ""))
            else:
                cells.append(f"{_num(x)}{ratio}")
        lines.append(f"{metric:<29}" + "".join(f"{c:>{w}}" for c in cells))
    lines += ["", f"{title:<48}" + "".join(f"{v:>16}" for v in product)]
    for target, by in ok.items():
        lines.append(f"{target:<48}" + "".join(
            f"{'yes' if by[v] else 'NO':>16}" for v in product))
    return "\n".join(lines)
