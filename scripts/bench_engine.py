"""Benchmark: the streambridge engine against a bare Starlette ``StreamingResponse``.

What is compared
    Two uvicorn processes (1 worker each, 127.0.0.1, ephemeral port, asyncio loop,
    h11, no access log) started from ``scripts/bench_apps.py``:

    - engine:   ``async_core.create_app(Settings(max_streams=2000), registry=...)``
      with the benchmark agent registered (native SSE, default policy);
    - baseline: a Starlette route returning ``StreamingResponse`` over the same
      async agent, one ``data: <token>\\n\\n`` frame per token.

    The agent yields tokens that are their own production wall time
    (``"1712345678.123456 "``), paced by ``interval_ms`` (0: unpaced, never awaits).

How it is measured
    The client is a raw asyncio HTTP/1.1 client (``asyncio.Protocol``, one
    connection per stream, ``Connection: close``). It never de-frames: it finds
    every timestamp in each received read with one regex, so engine deltas that
    coalesce several tokens count as several tokens, each with its own lag.

    - TTFC: request bytes written → first token received (``perf_counter``).
    - lag: receive wall time of the read − production wall time of the token
      (same machine, same clock), for every token.
    - tokens/s: tokens received by all streams / wall time of the phase.
    - server CPU per token: ``psutil`` user+system CPU time of the server process
      over the phase, divided by the tokens received.
    - RSS per open stream: server RSS with N streams open (each has received its
      first token, the next one is due in 20 s) minus RSS before, divided by N.
      Measured first, right after a small warm-up, so that neither server reuses
      heap freed by the big phases.
    - client CPU: ``time.process_time()`` of this process over the phase / wall
      time; above 90 % of a core the client may be the bottleneck (flagged).
      Unpaced streams are read with ``SO_RCVLOWAT`` (16 KiB): one client wake-up
      per many frames instead of one per frame; lags are not taken there.

    Both servers run for the whole benchmark; phases alternate between them
    round by round (the order flips every round), so background load on the
    2-core machine hits both alike. Paced samples are pooled over the rounds;
    throughput and CPU figures are medians over the rounds.

Usage
    ``.venv/bin/python scripts/bench_engine.py [--quick] [--json PATH]``

Traffic goes to 127.0.0.1 only; every wait is bounded; both servers are
stopped (by their own PID) in ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

HOST = "127.0.0.1"
SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
APPS = ("engine", "baseline")
FACTORIES = {"engine": "bench_apps:engine_app", "baseline": "bench_apps:baseline_app"}
TIMESTAMP = re.compile(rb"\d{10}\.\d{6}")
END_OF_BODY = b"\r\n0\r\n\r\n"
SATURATED = 0.90
UNPACED_RCVLOWAT = 16_384
START_TIMEOUT = 30.0


# -- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Sizes of every phase (``--quick`` shrinks them all)."""

    ttfc_requests: int = 40      # sequential 1-token streams per app (TTFC, 1 stream)
    paced_tokens: int = 200      # tokens per paced stream
    interval_ms: float = 10.0    # pace of the paced phases
    single_rounds: int = 3       # rounds of 1 paced stream per app
    concurrent: int = 100        # paced streams at once
    concurrent_rounds: int = 3
    unpaced_tokens: int = 10_000
    unpaced_rounds: int = 3      # rounds of 1 unpaced stream per app
    unpaced_streams: int = 20
    unpaced_multi_rounds: int = 2
    open_streams: int = 1_000    # streams held open for the RSS figure
    phase_timeout: float = 120.0


QUICK = Plan(ttfc_requests=20, paced_tokens=100, single_rounds=1, concurrent=50,
             concurrent_rounds=1, unpaced_tokens=5_000, unpaced_rounds=2, unpaced_streams=10,
             unpaced_multi_rounds=1, open_streams=200, phase_timeout=30.0)


# -- servers ---------------------------------------------------------------------------


class Server:
    """One uvicorn process serving one of the two apps on an ephemeral port.

    Args:
        name: ``engine`` or ``baseline``.
        log_dir: where its combined stdout/stderr goes.
    """

    LISTEN = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+) \(")

    def __init__(self, name: str, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    def command(self) -> list[str]:
        """The command line; it binds 127.0.0.1 port 0 and logs the port (``LISTEN``)."""
        return [sys.executable, "-m", "uvicorn", "--factory", FACTORIES[self.name],
                "--app-dir", str(SCRIPTS), "--host", HOST, "--port", "0",
                "--backlog", "4096", "--no-access-log", "--log-level", "info",
                "--no-use-colors", "--loop", "asyncio", "--http", "h11"]

    def popen_options(self) -> dict[str, Any]:
        """Extra ``subprocess.Popen`` arguments (working directory, environment)."""
        return {"cwd": REPO}

    def started(self) -> None:
        """Called once the server answers ``/healthz`` (subclasses measure children)."""

    def start(self) -> None:
        """Start the server and return once ``/healthz`` answers 200.

        Raises:
            RuntimeError: the server exited or did not get ready in time.
        """
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         **self.popen_options())
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.port:
            match = self.LISTEN.search(self.log_path.read_bytes())
            if match:
                self.port = int(match.group(1))
            else:
                self._check_alive(deadline)
                time.sleep(0.05)
        while not self._healthy():
            self._check_alive(deadline)
            time.sleep(0.05)
        self.started()

    def _check_alive(self, deadline: float) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None or time.monotonic() > deadline:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} server did not start:\n{tail}")

    def _healthy(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=2) as sock:
                sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n"
                             "Connection: close\r\n\r\n".encode())
                return sock.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def cpu(self) -> float:
        """User + system CPU seconds used by the server process so far."""
        assert self.ps is not None
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        """Resident set size of the server process in bytes."""
        assert self.ps is not None
        return int(self.ps.memory_info().rss)

    def switches(self) -> int:
        """Voluntary context switches of the server's live threads so far."""
        assert self.ps is not None
        return thread_switches([self.ps.pid])

    async def wait_idle(self, max_wait: float) -> None:
        """Wait (bounded) until the server holds no established TCP connection."""
        assert self.ps is not None
        deadline = time.monotonic() + max_wait
        while any(c.status == psutil.CONN_ESTABLISHED for c in self.ps.net_connections("tcp")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: connections still open after {max_wait} s")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        """Terminate the process we started (SIGTERM, then SIGKILL after 15 s)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# -- client ----------------------------------------------------------------------------


def chat_request(port: int, options: dict[str, Any]) -> bytes:
    """The raw HTTP/1.1 request for one stream of the benchmark agent."""
    body = json.dumps({"agent": "bench", "message": "bench", "options": options}).encode()
    head = (f"POST /v1/chat HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class StreamClient(asyncio.Protocol):
    """One streamed response read straight off the socket.

    Args:
        request: the raw request to send.
        keep_lags: record every token's lag (paced phases only).
        rcvlowat: if set, ``SO_RCVLOWAT``: the socket reports readable only with
            that many bytes queued (or at EOF), so an unpaced stream costs the
            client one wake-up per many frames instead of one per frame.
    """

    def __init__(self, request: bytes, keep_lags: bool, rcvlowat: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.keep_lags = keep_lags
        self.rcvlowat = rcvlowat
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.sent_at = 0.0
        self.ttfc: float | None = None
        self.tokens = 0
        self.complete = False
        self.lags: list[float] = []
        self.first_token: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._head = b""
        self._carry = b""
        self._tail = b""
        self._in_body = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.rcvlowat:
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, self.rcvlowat)

    def send(self) -> None:
        """Write the request and start the TTFC clock."""
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now, wall = time.perf_counter(), time.time()
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self._head[9:12])
            data, self._head, self._in_body = self._head[end + 4:], b"", True
        buf = self._carry + data if self._carry else data
        # Tokens never contain a newline, so everything before the last one is whole.
        cut = buf.rfind(b"\n") + 1
        self._carry = buf[cut:]
        stamps = TIMESTAMP.findall(buf, 0, cut)
        if stamps:
            if self.ttfc is None:
                self.ttfc = now - self.sent_at
                self.first_token.set_result(None)
            self.tokens += len(stamps)
            if self.keep_lags:
                self.lags.extend([wall - float(s) for s in stamps])
        self._tail = (self._tail + data)[-len(END_OF_BODY):]

    def connection_lost(self, exc: Exception | None) -> None:
        self.complete = self.complete or self._tail.endswith(END_OF_BODY)
        for fut in (self.first_token, self.closed):
            if not fut.done():
                fut.set_result(None)

    def close(self) -> None:
        """Close the connection (the server sees a disconnect)."""
        if self.transport is not None:
            self.transport.close()


async def open_streams(port: int, count: int, options: dict[str, Any], *,
                       keep_lags: bool = False, rcvlowat: int = 0, connect_limit: int = 200,
                       send_at_once: bool = True) -> list[StreamClient]:
    """Connect ``count`` clients and send their requests.

    With ``send_at_once`` every connection is made first and all requests are
    written together; otherwise each request goes out as soon as it is connected.
    """
    loop = asyncio.get_running_loop()
    request = chat_request(port, options)
    clients = [StreamClient(request, keep_lags, rcvlowat) for _ in range(count)]
    gate = asyncio.Semaphore(connect_limit)

    async def connect(client: StreamClient) -> None:
        async with gate:
            await loop.create_connection(lambda: client, HOST, port)
        if not send_at_once:
            client.send()

    try:
        await asyncio.gather(*(connect(c) for c in clients))
    except BaseException:
        for c in clients:
            c.close()
        raise
    if send_at_once:
        for c in clients:
            c.send()
    return clients


async def wait_all(clients: Sequence[StreamClient], what: str, max_wait: float,
                   pick: Callable[[StreamClient], asyncio.Future[None]]) -> None:
    """Wait (bounded) for ``pick(client)`` of every client; close all on failure."""
    try:
        await asyncio.wait_for(asyncio.gather(*(pick(c) for c in clients)), max_wait)
    except BaseException:
        for c in clients:
            c.close()
        raise
    bad = [c for c in clients if c.status != 200]
    if bad:
        raise RuntimeError(f"{what}: {len(bad)} of {len(clients)} streams got status "
                           f"{sorted({c.status for c in bad})}")


# -- phases ----------------------------------------------------------------------------


@dataclass
class Sample:
    """What one app did in one run of a phase."""

    streams: int
    tokens: int
    wall: float
    server_cpu: float
    client_cpu: float
    ttfc: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    incomplete: int = 0
    switches: int = 0  # voluntary context switches of the server's threads


def thread_switches(pids: Sequence[int]) -> int:
    """Sum of ``voluntary_ctxt_switches`` over every live thread of ``pids`` (Linux).

    psutil's ``num_ctx_switches`` reads only the main thread's counters; a thread
    that has exited takes its counts with it (our servers keep their threads).
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


async def run_phase(server: Server, streams: int, options: dict[str, Any], *,
                    keep_lags: bool, max_wait: float, expect_tokens: int,
                    rcvlowat: int = 0) -> Sample:
    """Run ``streams`` concurrent streams to their end and measure them."""
    cpu0, client0, t0 = server.cpu(), time.process_time(), time.perf_counter()
    switches0 = server.switches()
    clients = await open_streams(server.port, streams, options, keep_lags=keep_lags,
                                 rcvlowat=rcvlowat)
    await wait_all(clients, server.name, max_wait, lambda c: c.closed)
    wall = time.perf_counter() - t0
    sample = Sample(streams=streams, tokens=sum(c.tokens for c in clients), wall=wall,
                    server_cpu=server.cpu() - cpu0,
                    client_cpu=(time.process_time() - client0) / wall,
                    switches=server.switches() - switches0)
    for c in clients:
        if c.ttfc is not None:
            sample.ttfc.append(c.ttfc)
        sample.lags.extend(c.lags)
        if not c.complete or c.tokens != expect_tokens:
            sample.incomplete += 1
    return sample


async def rss_per_stream(server: Server, count: int, max_wait: float) -> tuple[float, float]:
    """Open ``count`` slow streams, return (bytes of RSS per stream, client CPU share)."""
    options: dict[str, Any] = {"tokens": 2, "interval_ms": 20_000}
    before = server.rss()
    client0, t0 = time.process_time(), time.perf_counter()
    clients = await open_streams(server.port, count, options, send_at_once=False)
    try:
        await wait_all(clients, server.name, max_wait, lambda c: c.first_token)
        missing = sum(1 for c in clients if c.ttfc is None)
        if missing:
            raise RuntimeError(f"{server.name}: {missing} streams closed before a token")
        after = server.rss()
        client_share = (time.process_time() - client0) / (time.perf_counter() - t0)
    finally:
        for c in clients:
            c.close()
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), max_wait)
        await server.wait_idle(max_wait)
    return (after - before) / count, client_share


def ordered(round_no: int) -> tuple[str, ...]:
    """Both apps, the order flipped every round."""
    return APPS if round_no % 2 == 0 else APPS[::-1]


async def benchmark(servers: dict[str, Server], plan: Plan) -> dict[str, Any]:
    """Run every phase on both servers, interleaved, and return the raw samples."""
    paced: dict[str, Any] = {"tokens": plan.paced_tokens, "interval_ms": plan.interval_ms}
    unpaced: dict[str, Any] = {"tokens": plan.unpaced_tokens, "interval_ms": 0}
    t = plan.phase_timeout
    out: dict[str, dict[str, list[Sample]]] = {}

    def keep(phase: str, app: str, sample: Sample) -> None:
        out.setdefault(phase, {a: [] for a in APPS})[app].append(sample)

    log("warm-up")
    for app in APPS:
        await run_phase(servers[app], 10, {"tokens": 20, "interval_ms": 1},
                        keep_lags=False, max_wait=t, expect_tokens=20)
        await run_phase(servers[app], 1, {"tokens": 500, "interval_ms": 0},
                        keep_lags=False, max_wait=t, expect_tokens=500)

    # First, on fresh heaps: later phases leave freed memory that new streams reuse.
    log(f"RSS with {plan.open_streams} open streams")
    rss: dict[str, float] = {}
    rss_client: dict[str, float] = {}
    for app in APPS:
        rss[app], rss_client[app] = await rss_per_stream(servers[app], plan.open_streams, t)

    log(f"TTFC, {plan.ttfc_requests} sequential 1-token requests per app")
    for i in range(plan.ttfc_requests):
        for app in ordered(i):
            keep("ttfc1", app, await run_phase(servers[app], 1, {"tokens": 1}, keep_lags=False,
                                               max_wait=t, expect_tokens=1))

    log(f"1 stream x {plan.paced_tokens} tokens @ {plan.interval_ms:g} ms, "
        f"{plan.single_rounds} rounds")
    for r in range(plan.single_rounds):
        for app in ordered(r):
            keep("paced1", app, await run_phase(servers[app], 1, paced, keep_lags=True,
                                                max_wait=t, expect_tokens=plan.paced_tokens))

    log(f"{plan.concurrent} streams x {plan.paced_tokens} tokens @ {plan.interval_ms:g} ms, "
        f"{plan.concurrent_rounds} rounds")
    for r in range(plan.concurrent_rounds):
        for app in ordered(r):
            keep("pacedN", app, await run_phase(servers[app], plan.concurrent, paced,
                                                keep_lags=True, max_wait=t,
                                                expect_tokens=plan.paced_tokens))

    log(f"unpaced 1 x {plan.unpaced_tokens} tokens, {plan.unpaced_rounds} rounds")
    for r in range(plan.unpaced_rounds):
        for app in ordered(r):
            keep("unpaced1", app, await run_phase(servers[app], 1, unpaced, keep_lags=False,
                                                  max_wait=t, expect_tokens=plan.unpaced_tokens,
                                                  rcvlowat=UNPACED_RCVLOWAT))

    log(f"unpaced {plan.unpaced_streams} x {plan.unpaced_tokens} tokens, "
        f"{plan.unpaced_multi_rounds} rounds")
    for r in range(plan.unpaced_multi_rounds):
        for app in ordered(r):
            keep("unpacedN", app, await run_phase(servers[app], plan.unpaced_streams, unpaced,
                                                  keep_lags=False, max_wait=t,
                                                  expect_tokens=plan.unpaced_tokens,
                                                  rcvlowat=UNPACED_RCVLOWAT))

    return {"samples": out, "rss": rss, "rss_client": rss_client}


# -- report ----------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile ``p`` (0–100) of ``values``; NaN if empty."""
    if not values:
        return math.nan
    ordered_values = sorted(values)
    return ordered_values[max(0, math.ceil(p / 100 * len(ordered_values)) - 1)]


@dataclass
class Row:
    """One line of the result table."""

    metric: str
    unit: str
    engine: float
    baseline: float
    target: str = ""
    ratio: float = field(init=False)
    ok: bool | None = field(init=False)

    def __post_init__(self) -> None:
        self.ratio = self.engine / self.baseline if self.baseline else math.nan
        self.ok = None
        if self.target.startswith("<="):
            self.ok = self.ratio <= float(self.target[2:])
        elif self.target.startswith(">="):
            self.ok = self.ratio >= float(self.target[2:])


def summarize(raw: dict[str, Any], plan: Plan) -> tuple[list[Row], dict[str, Any]]:
    """Turn the samples into table rows and the diagnostics (client CPU, errors)."""
    samples: dict[str, dict[str, list[Sample]]] = raw["samples"]

    def pooled(phase: str, app: str, attr: str) -> list[float]:
        return [v for s in samples[phase][app] for v in getattr(s, attr)]

    def median(phase: str, app: str, fn: Callable[[Sample], float]) -> float:
        return statistics.median(fn(s) for s in samples[phase][app])

    def ms(values: list[float], p: float) -> float:
        return pct(values, p) * 1000

    def rate(s: Sample) -> float:
        return s.tokens / s.wall

    def cpu_us(s: Sample) -> float:
        return s.server_cpu / s.tokens * 1e6 if s.tokens else math.nan

    n, u, k = plan.concurrent, plan.unpaced_tokens, plan.unpaced_streams
    rows: list[Row] = []
    for label, phases in (("1 stream", ("ttfc1", "paced1")), (f"{n} streams", ("pacedN",))):
        ttfc = {a: [v for ph in phases for v in pooled(ph, a, "ttfc")] for a in APPS}
        lags = {a: pooled(phases[-1], a, "lags") for a in APPS}
        rows += [
            Row(f"TTFC p50, {label}", "ms", ms(ttfc["engine"], 50), ms(ttfc["baseline"], 50),
                "<=1.1"),
            Row(f"TTFC p99, {label}", "ms", ms(ttfc["engine"], 99), ms(ttfc["baseline"], 99)),
            Row(f"lag p50, {label}", "ms", ms(lags["engine"], 50), ms(lags["baseline"], 50)),
            Row(f"lag p99, {label}", "ms", ms(lags["engine"], 99), ms(lags["baseline"], 99),
                "<=1.5" if label != "1 stream" else ""),
        ]
    rows.append(Row(f"server CPU/token, {n} paced", "us", median("pacedN", "engine", cpu_us),
                    median("pacedN", "baseline", cpu_us)))
    for phase, label in (("unpaced1", f"1x{u}"), ("unpacedN", f"{k}x{u}")):
        rows += [
            Row(f"tokens/s unpaced, {label}", "tok/s", median(phase, "engine", rate),
                median(phase, "baseline", rate), ">=1.0"),
            Row(f"server CPU/token, {label}", "us", median(phase, "engine", cpu_us),
                median(phase, "baseline", cpu_us), "<=1.5"),
        ]
    rows.append(Row(f"RSS per open stream ({plan.open_streams})", "KB",
                    raw["rss"]["engine"] / 1024, raw["rss"]["baseline"] / 1024, "<=1.5"))
    client_cpu = {f"{phase}/{app}": max(s.client_cpu for s in by_app[app])
                  for phase, by_app in samples.items() for app in APPS}
    client_cpu.update({f"rss/{app}": v for app, v in raw["rss_client"].items()})
    incomplete = {f"{phase}/{app}": sum(s.incomplete for s in by_app[app])
                  for phase, by_app in samples.items() for app in APPS}
    extra = {"client_cpu_max_share": client_cpu,
             "incomplete_streams": {k2: v for k2, v in incomplete.items() if v},
             "lag_samples": {a: len(pooled("pacedN", a, "lags")) for a in APPS},
             "ttfc_samples": {a: len(pooled("ttfc1", a, "ttfc")) for a in APPS}}
    return rows, extra


def render(rows: list[Row], extra: dict[str, Any]) -> str:
    """The table and its footnotes as text."""
    lines = [f"{'metric':<34} {'unit':>5} {'engine':>10} {'baseline':>10} {'ratio':>7} "
             f"{'target':>7}  ok",
             "-" * 84]
    for r in rows:
        mark = "" if r.ok is None else ("yes" if r.ok else "NO")
        lines.append(f"{r.metric:<34} {r.unit:>5} {r.engine:>10.4g} {r.baseline:>10.4g} "
                     f"{r.ratio:>6.2f}x {r.target:>7}  {mark}")
    busy = {k: v for k, v in extra["client_cpu_max_share"].items() if v > SATURATED}
    worst = max(extra["client_cpu_max_share"].items(), key=lambda kv: kv[1])
    lines.append("")
    lines.append(f"client CPU (share of one core, max per phase): highest {worst[0]} "
                 f"{worst[1]:.0%}" + (f"; SATURATED: {sorted(busy)}" if busy else
                                      "; never saturated"))
    if extra["incomplete_streams"]:
        lines.append(f"INCOMPLETE streams (missing end or tokens): {extra['incomplete_streams']}")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------


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


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, start both servers, run the benchmark, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30-second smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write figures as JSON")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    raise_fd_limit(plan.open_streams * 2 + 1024)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
        servers = {app: Server(app, Path(tmp)) for app in APPS}
        try:
            for server in servers.values():
                server.start()
                log(f"{server.name}: pid {server.ps.pid if server.ps else '?'}, "
                    f"port {server.port}")
            raw = asyncio.run(benchmark(servers, plan))
        finally:
            for server in servers.values():
                server.stop()
    rows, extra = summarize(raw, plan)
    print(render(rows, extra))
    log(f"done in {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"plan": asdict(plan), "rows": [asdict(r) for r in rows],
                                         **extra}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
