"""What the benchmarks share, on top of ``async_core.harness`` (servers, clients, percentiles).

- ``BenchServer``: a ``ServerProcess`` whose CPU, RSS and context switches are read
  with ``ProcessTree`` (the process alone, or with gunicorn's workers);
- ``Sample``/``run_phase``/``rss_per_stream``: one measured phase of concurrent streams;
- the disconnect phase's helpers (``leave_phase`` and the agent's record);
- ``thread_roles``: CPU and switches of each kind of thread (loop, agent, WSGI);
- command lines, progress, table cells;
- ``GcPauses``/``set_gc``: the collector's full pauses, and its tuning under test.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from async_core.harness import (
    HOST,
    LeavingClient,
    ProcessTree,
    ServerProcess,
    chat_request,
    open_streams,
    percentile,
    wait_all,
)

GC_DEFAULT = gc.get_threshold()
GC_TUNED = (10_000, 50, 100)  # young collections 14x rarer, full ones far rarer


def set_gc(mode: str) -> None:
    """``default``: CPython's thresholds, nothing frozen; ``tuned``: what is alive now
    moved out of the collector's reach (``gc.freeze``, as after a server's start-up)
    and ``GC_TUNED`` thresholds."""
    if mode == "tuned":
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_TUNED)
    else:
        gc.unfreeze()
        gc.set_threshold(*GC_DEFAULT)


class GcPauses:
    """This process' full (generation 2) collections: how many, and the longest."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                self._start = time.perf_counter()
            else:
                self.pauses.append(time.perf_counter() - self._start)

    def take(self) -> tuple[int, float]:
        """The count and longest pause (ms) since the last ``take``."""
        out = (len(self.pauses), 1000 * max(self.pauses, default=0.0))
        self.pauses = []
        return out


SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
UNPACED_RCVLOWAT = 16_384  # unpaced streams: one client wake-up per many frames


class BenchServer(ServerProcess):
    """A benchmark's server on an ephemeral loopback port, measured as a process tree.

    Args:
        name: the variant's name (log file name, messages).
        cmd: the command line; it must bind 127.0.0.1 port 0 and log the port.
        env: extra environment variables.
        log_dir: where its combined stdout/stderr goes.
        children: measure its child processes too (gunicorn's worker).
    """

    def __init__(self, name: str, cmd: Sequence[str], env: Mapping[str, str], log_dir: Path,
                 children: bool = True) -> None:
        super().__init__(name, cmd, env=env, cwd=REPO, log_dir=log_dir)
        self.tree = ProcessTree(self.pid, children=children)
        self.cpu, self.rss, self.switches = self.tree.cpu, self.tree.rss, self.tree.switches
        self.worker_pids = [p.pid for p in self.tree.procs()[1:]]
        self.roles_dir: Path | None = None  # where the agent notes thread names, if set

    async def wait_idle(self, max_wait: float) -> None:
        """Wait (bounded) until the server holds no established TCP connection."""
        await self.tree.wait_idle(max_wait, self.name)


def uvicorn_cmd(factory: str) -> list[str]:
    """uvicorn serving ``factory`` from ``scripts/`` (1 worker, asyncio, h11, no access log)."""
    return [sys.executable, "-m", "uvicorn", "--factory", factory, "--app-dir", str(SCRIPTS),
            "--host", HOST, "--port", "0", "--backlog", "4096", "--no-access-log",
            "--log-level", "info", "--no-use-colors", "--loop", "asyncio", "--http", "h11"]


def gunicorn_cmd(app: str, extra: Sequence[str]) -> list[str]:
    """A bare gunicorn command line (1 worker, loopback, ephemeral port) for ``app``."""
    return [sys.executable, "-m", "gunicorn", "--no-control-socket", "--workers", "1",
            "--bind", f"{HOST}:0", "--backlog", "4096", "--timeout", "60",
            "--log-level", "info", *extra, app]


@dataclass
class Sample:
    """What one server did in one run of a phase."""

    streams: int
    tokens: int
    wall: float
    server_cpu: float
    client_cpu: float
    ttfc: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    incomplete: int = 0
    switches: int = 0  # voluntary context switches of the server's threads
    roles: dict[str, float] = field(default_factory=dict)  # thread_roles over the phase


async def run_phase(server: BenchServer, streams: int, options: dict[str, Any], *,
                    keep_lags: bool, max_wait: float, expect_tokens: int,
                    rcvlowat: int = 0) -> Sample:
    """Run ``streams`` concurrent streams to their end and measure them."""
    cpu0, client0, t0 = server.cpu(), time.process_time(), time.perf_counter()
    switches0 = server.switches()
    roles0 = thread_roles(server)
    clients = await open_streams(server.port, streams, chat_request(server.port, options),
                                 keep_lags=keep_lags, rcvlowat=rcvlowat)
    await wait_all(clients, server.name, max_wait, lambda c: c.closed)
    wall = time.perf_counter() - t0
    sample = Sample(streams=streams, tokens=sum(c.tokens for c in clients), wall=wall,
                    server_cpu=server.cpu() - cpu0,
                    client_cpu=(time.process_time() - client0) / wall,
                    switches=server.switches() - switches0)
    sample.roles = {k: v - roles0.get(k, 0.0) for k, v in thread_roles(server).items()}
    for c in clients:
        if c.ttfc is not None:
            sample.ttfc.append(c.ttfc)
        sample.lags.extend(c.lags)
        if not c.complete or c.tokens != expect_tokens:
            sample.incomplete += 1
    return sample


ROLES = (("streambridge-loop", "loop"), ("streambridge-agent", "agent"),
         ("ThreadPoolExecutor", "WSGI"))  # Python thread name prefix -> role


def thread_roles(server: BenchServer) -> dict[str, float]:
    """``{"<role> cpu": seconds, "<role> sw": voluntary switches}`` so far, summed over
    the live threads of the server's workers, each named by the agent's note
    (``bench_legacy_apps._note_threads``); a thread it has not named yet is "other"."""
    out: dict[str, float] = {}
    if server.roles_dir is None:
        return out
    for pid in server.worker_pids:
        try:
            names = json.loads((server.roles_dir / f"threads-{pid}.json").read_text())
            tids = os.listdir(f"/proc/{pid}/task")
        except (OSError, ValueError):
            continue
        for tid in tids:
            name = names.get(tid, "")
            role = next((r for prefix, r in ROLES if name.startswith(prefix)),
                        "main" if tid == str(pid) else "other")
            try:  # schedstat: ns on the CPU, exact (stat's ticks miss short runs)
                ran = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]
                status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            except OSError:
                continue  # the thread ended while we read
            out[f"{role} cpu"] = out.get(f"{role} cpu", 0.0) + int(ran) / 1e9
            switches = status.split("voluntary_ctxt_switches:", 1)[1].split()[0]
            out[f"{role} sw"] = out.get(f"{role} sw", 0.0) + int(switches)
    return out


def store_env(variant: str, store: bool, tmp: Path) -> dict[str, str]:
    """Persistence off, or an embedded SQLite file of the variant's own."""
    if not store:
        return {"STREAMBRIDGE_DATABASE_URL": "none"}
    return {"STREAMBRIDGE_DATABASE_PATH": str(tmp / f"{variant}.sqlite3")}


class Phases:
    """The samples of every phase, ``{phase: {variant: [Sample]}}``, run round by round.

    Args:
        servers: the variants' servers, in their base order.
        max_wait: the bound of each phase, in seconds.
    """

    def __init__(self, servers: Mapping[str, BenchServer], max_wait: float) -> None:
        self.servers, self.max_wait = servers, max_wait
        self.samples: dict[str, dict[str, list[Sample]]] = {}

    async def warm_up(self) -> None:
        """Imports, pools and first connections of every server, not measured."""
        log("warm-up")
        for server in self.servers.values():
            for streams, tokens, interval in ((10, 20, 1), (1, 500, 0)):
                await run_phase(server, streams, {"tokens": tokens, "interval_ms": interval},
                                keep_lags=False, max_wait=self.max_wait, expect_tokens=tokens)

    async def run(self, phase: str, rounds: int, streams: int, options: dict[str, Any], *,
                  keep_lags: bool = False, rcvlowat: int = 0) -> None:
        """``rounds`` rounds of ``streams`` streams on every server, the order rotated."""
        by = self.samples.setdefault(phase, {name: [] for name in self.servers})
        for r in range(rounds):
            for name in rotated(list(self.servers), r):
                by[name].append(await run_phase(
                    self.servers[name], streams, options, keep_lags=keep_lags,
                    max_wait=self.max_wait, expect_tokens=options["tokens"], rcvlowat=rcvlowat))


async def rss_per_stream(server: BenchServer, count: int, max_wait: float,
                         hold_ms: int = 20_000, close: bool = True) -> tuple[float, float]:
    """Open ``count`` streams whose second token is due in ``hold_ms``; return (bytes of
    RSS per stream, the client's CPU share) once each has its first token.

    ``close``: the client closes them; otherwise they end by themselves (a WSGI server
    sees a closed connection only on its next write, so a sleeping thread per stream
    would hold the gthread pool for the next phases).
    """
    before = server.rss()
    client0, t0 = time.process_time(), time.perf_counter()
    clients = await open_streams(server.port, count, chat_request(
        server.port, {"tokens": 2, "interval_ms": hold_ms}), send_at_once=False)
    try:
        await wait_all(clients, server.name, max_wait, lambda c: c.first_token,
                       check_status=close)
        after = server.rss()
        client_share = (time.process_time() - client0) / (time.perf_counter() - t0)
        if close and any(c.ttfc is None for c in clients):
            raise RuntimeError(f"{server.name}: streams closed before a token")
        done_early = sum(1 for c in clients if c.closed.done())
        if not close and done_early:
            log(f"warning: {server.name}: {done_early} streams ended before the RSS reading")
        if not close:
            await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), max_wait)
    finally:
        for c in clients:
            c.close()
        if close:
            await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), max_wait)
    await server.wait_idle(max_wait)
    return (after - before) / count, client_share


def pct(values: Sequence[float], p: float) -> float:
    """``async_core.harness.percentile`` with ``p`` in 0-100 (the tables' columns)."""
    return percentile(values, p / 100)


def rotated(names: Sequence[str], round_no: int) -> list[str]:
    """``names``, rotated by ``round_no`` (background load hits every variant alike)."""
    k = round_no % len(names)
    return [*names[k:], *names[:k]]


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


async def leave_phase(server: BenchServer, streams: int, leave_after: int, interval_ms: float,
                      leave_wait: float, max_wait: float, state_dir: Path) -> dict[str, Any]:
    """Streams whose clients leave mid-way: what their agents did afterwards."""
    loop = asyncio.get_running_loop()
    sids = [f"{server.name}-{uuid.uuid4().hex[:12]}" for _ in range(streams)]
    clients = [LeavingClient(chat_request(server.port, {
        "tokens": 600, "interval_ms": interval_ms, "sid": sid}), leave_after) for sid in sids]
    for c in clients:
        await loop.create_connection(lambda c=c: c, HOST, server.port)
        c.send()
    try:
        await asyncio.wait_for(asyncio.gather(*(c.left for c in clients)), max_wait)
    finally:
        for c in clients:
            c.close()
    left = [c.left_at for c in clients]
    if any(t is None for t in left):
        raise RuntimeError(f"{server.name}: a stream ended before its client left")
    deadline = max(t or 0.0 for t in left) + leave_wait
    while time.time() < deadline:
        if all(read_agent_record(state_dir / s)[1] is not None for s in sids):
            break
        await asyncio.sleep(0.02)
    after, stop_ms, running = [], [], 0
    for sid, left_at in zip(sids, left, strict=True):
        assert left_at is not None
        times, ended = read_agent_record(state_dir / sid)
        after.append(sum(1 for t in times if t > left_at))  # produced after the client left
        if ended is None:
            running += 1
        else:
            stop_ms.append((ended - left_at) * 1000)
    return {"after": after, "stop_ms": stop_ms, "still_running": running}


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def raise_fd_limit(needed: int) -> None:
    """Raise RLIMIT_NOFILE for this process and the servers it starts (inherited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < needed:
        log(f"warning: RLIMIT_NOFILE is {soft}, fewer than the {needed} wanted")


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
