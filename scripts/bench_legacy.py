"""Benchmark: the legacy path (gthread, gevent) and the async path against today's baselines.

What is compared (one run, seven servers up at once, 1 worker each, 127.0.0.1)
    All stream the same sync agent, ``bench_legacy_apps.bench_sync`` (tokens that are
    their own production wall time, paced by ``time.sleep(interval_ms)``):

    - direct:   Flask view iterating the agent, ``gunicorn -k gthread --threads 256``;
    - polling:  Flask view + agent thread + ``queue.Queue`` polled with
      ``get(timeout=0.1)``, ``gunicorn -k gthread --threads 256``;
    - legacy-gthread: ``streambridge serve --path legacy --worker-class gthread
      --threads 256`` (the reference app; agent registered through
      ``STREAMBRIDGE_AGENTS=bench_legacy_apps:AGENTS``);
    - gthread-5ms: the same with Python's GIL switch interval (5 ms, not 20);
    - legacy-gevent:  the same with ``--worker-class gevent`` (1000 connections);
    - async:    ``streambridge serve --path async`` (uvicorn) with
      ``STREAMBRIDGE_AGENT_FORM=sync``: the sync agent through the janus runner;
    - async-twin: the same server running the agent's async twin (``asyncio.sleep``
      pacing): the engine with no thread hop, for reference (no target applies).

    Persistence is off (``STREAMBRIDGE_DATABASE_URL=none``; the baselines store nothing)
    unless ``--store``: then each product server has an SQLite file of its own.

    The baselines send ``data: <token>\\n\\n`` per token; the product sends its native
    SSE (``id``/``event: delta``/JSON data, coalesced deltas), as users get it.

How it is measured
    With ``async_core.harness.StreamClient`` (raw asyncio, one connection per stream;
    every timestamp found in each read counts as a token with its own lag). Phases
    alternate between the servers, the order rotating every round.

    - TTFC: request written → first token read. "1 stream" pools sequential 1-token
      requests and the paced single streams; "N streams" the concurrent paced phase.
    - lag: receive wall time − production wall time, every token of the paced phases.
    - CPU µs/token: user+system CPU of the server's whole process tree (psutil) over
      the phase / tokens received; "@10 ms" is the concurrent paced phase.
    - switches/token: voluntary context switches of every live thread of the tree
      (/proc/<pid>/task/*/status) over the concurrent paced phase / tokens; the
      indented rows split CPU and switches by thread (``_benchlib.thread_roles``).
    - tokens/s unpaced: tokens received / wall time (``SO_RCVLOWAT`` reads).
    - RSS/stream: tree RSS with N streams open (first token read, second due in
      ``rss_hold_ms``) minus before, / N; taken first, on fresh heaps.
    - after-leave: clients close after 20 tokens of a 10 ms-paced stream; the agent
      logs each production time and the time its ``finally`` ran; we count tokens
      produced after the close and wait up to ``leave_wait`` s for the ``finally``.

Usage
    ``.venv/bin/python scripts/bench_legacy.py [--quick] [--json PATH]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _benchlib import (
    SCRIPTS,
    UNPACED_RCVLOWAT,
    BenchServer,
    Phases,
    Sample,
    gunicorn_cmd,
    leave_phase,
    log,
    raise_fd_limit,
    render_tables,
    rss_per_stream,
    store_env,
)

from async_core.harness import percentile, serve_command

VARIANTS = ("direct", "polling", "legacy-gthread", "gthread-5ms", "legacy-gevent", "async",
            "async-twin")
PRODUCT = ("legacy-gthread", "legacy-gevent", "async")
BASE, THREADS = "direct", "256"
COMMANDS: dict[str, list[str]] = {
    "direct": gunicorn_cmd("bench_legacy_apps:direct_app()",
                           ["--worker-class", "gthread", "--threads", THREADS]),
    "polling": gunicorn_cmd("bench_legacy_apps:polling_app()",
                            ["--worker-class", "gthread", "--threads", THREADS]),
    "legacy-gthread": serve_command("legacy-gthread", args=["--threads", THREADS]),
    "gthread-5ms": serve_command("legacy-gthread", args=["--threads", THREADS]),
    "legacy-gevent": serve_command("legacy-gevent"),
    "async": serve_command("async-auto"),  # uvicorn's own loop choice, as before
    "async-twin": serve_command("async-auto"),
}
# async: the sync agent through the janus runner on uvicorn's loop; async-twin: its
# async twin, natively (the engine without any seam); 0: Python's own switch interval.
VARIANT_ENV = {"async": {"STREAMBRIDGE_AGENT_FORM": "sync"},
               "async-twin": {"STREAMBRIDGE_AGENT_FORM": "async"},
               "gthread-5ms": {"STREAMBRIDGE_SWITCH_INTERVAL": "0"}}
CPU_TARGET_US = 25.0


@dataclass(frozen=True)
class Plan:
    """Sizes of every phase (``--quick`` shrinks them)."""

    ttfc_requests: int = 30
    paced_tokens: int = 200
    interval_ms: float = 10.0
    single_rounds: int = 2
    concurrent: int = 100
    concurrent_rounds: int = 2
    unpaced_tokens: int = 10_000
    unpaced_rounds: int = 2
    unpaced_streams: int = 20
    unpaced_multi_tokens: int = 5_000
    unpaced_multi_rounds: int = 2
    open_threaded: int = 200      # RSS: streams held open on gthread servers
    open_async: int = 500         # ... on gevent and uvicorn
    rss_hold_ms: int = 4_000
    leaving: int = 5              # disconnect phase: streams per variant
    leave_after: int = 20
    leave_wait: float = 2.0
    phase_timeout: float = 120.0


QUICK = Plan(ttfc_requests=8, paced_tokens=60, single_rounds=1, concurrent=30,
             concurrent_rounds=1, unpaced_tokens=3_000, unpaced_rounds=1, unpaced_streams=5,
             unpaced_multi_tokens=2_000, unpaced_multi_rounds=1, open_threaded=50,
             open_async=100, rss_hold_ms=2_000, leaving=2, phase_timeout=30.0)


async def benchmark(servers: dict[str, BenchServer], plan: Plan,
                    state_dir: Path) -> dict[str, Any]:
    """Run every phase on every server, interleaved, and return the raw samples."""
    paced: dict[str, Any] = {"tokens": plan.paced_tokens, "interval_ms": plan.interval_ms}
    t = plan.phase_timeout
    phases = Phases(servers, t)
    await phases.warm_up()

    log("RSS per open stream")
    rss: dict[str, dict[str, float]] = {}
    for name in VARIANTS:
        count = plan.open_threaded if "gevent" not in name and "async" not in name \
            else plan.open_async
        per, _ = await rss_per_stream(servers[name], count, t, plan.rss_hold_ms, close=False)
        rss[name] = {"streams": count, "bytes": per}

    log(f"TTFC, {plan.ttfc_requests} sequential 1-token requests per variant")
    await phases.run("ttfc1", plan.ttfc_requests, 1, {"tokens": 1})
    for label, phase, streams, rounds in (
            ("1 stream", "paced1", 1, plan.single_rounds),
            (f"{plan.concurrent} streams", "pacedN", plan.concurrent, plan.concurrent_rounds)):
        log(f"{label} x {plan.paced_tokens} tokens @ {plan.interval_ms:g} ms, {rounds} rounds")
        await phases.run(phase, rounds, streams, paced, keep_lags=True)
    for phase, streams, tokens, rounds in (
            ("unpaced1", 1, plan.unpaced_tokens, plan.unpaced_rounds),
            ("unpacedN", plan.unpaced_streams, plan.unpaced_multi_tokens,
             plan.unpaced_multi_rounds)):
        log(f"unpaced {streams} x {tokens} tokens, {rounds} rounds")
        await phases.run(phase, rounds, streams, {"tokens": tokens, "interval_ms": 0},
                         rcvlowat=UNPACED_RCVLOWAT)

    log(f"disconnects: {plan.leaving} streams per variant leave after {plan.leave_after} tokens")
    leaving = {}
    for name in VARIANTS:  # last: the polling baseline's agents keep running afterwards
        leaving[name] = await leave_phase(servers[name], plan.leaving, plan.leave_after,
                                          plan.interval_ms, plan.leave_wait, t, state_dir)
    return {"samples": phases.samples, "rss": rss, "leaving": leaving}


# -- report ----------------------------------------------------------------------------


def figures(raw: dict[str, Any], plan: Plan) -> dict[str, dict[str, float]]:
    """Every figure per variant: ``{metric: {variant: value}}``."""
    samples: dict[str, dict[str, list[Sample]]] = raw["samples"]

    def pooled(phases: Sequence[str], name: str, attr: str) -> list[float]:
        return [v for ph in phases for s in samples[ph][name] for v in getattr(s, attr)]

    def median(phase: str, name: str, fn: Callable[[Sample], float]) -> float:
        return statistics.median(fn(s) for s in samples[phase][name])

    def cpu_us(s: Sample) -> float:
        return s.server_cpu / s.tokens * 1e6 if s.tokens else math.nan

    n, k = plan.concurrent, plan.unpaced_streams
    fig: dict[str, dict[str, float]] = {}
    for name in VARIANTS:
        for label, ttfc_phases, lag_phase in (("1", ("ttfc1", "paced1"), "paced1"),
                                              (str(n), ("pacedN",), "pacedN")):
            ttfc = pooled(ttfc_phases, name, "ttfc")
            lags = pooled((lag_phase,), name, "lags")
            for kind, values in (("TTFC", ttfc), ("lag", lags)):
                for p in (50, 99):
                    fig.setdefault(f"{kind} p{p} ms, {label} str", {})[name] = percentile(
                        values, p / 100) * 1e3
        fig.setdefault(f"CPU us/tok @10ms, {n} str", {})[name] = median("pacedN", name, cpu_us)
        fig.setdefault("CPU us/tok @10ms, 1 str", {})[name] = median("paced1", name, cpu_us)
        # Thread wake-ups: each hop between OS threads is one (plus the GIL hand-over).
        fig.setdefault(f"switches/tok @10ms, {n} str", {})[name] = median(
            "pacedN", name, lambda s: s.switches / s.tokens if s.tokens else math.nan)
        for role in ("loop", "agent", "WSGI"):  # which hop costs what (gthread variants)
            for key, label, scale in (("cpu", "CPU us/tok", 1e6), ("sw", "switches/tok", 1)):
                fig.setdefault(f" {label} {role} thr", {})[name] = median("pacedN", name, (
                    lambda s, k=f"{role} {key}", x=scale: s.roles.get(k, 0.0) * x / s.tokens))
        for phase, label in (("unpaced1", "1"), ("unpacedN", str(k))):
            fig.setdefault(f"tok/s unpaced, {label} str", {})[name] = median(
                phase, name, lambda s: s.tokens / s.wall)
            fig.setdefault(f"CPU us/tok unpaced, {label}", {})[name] = median(phase, name, cpu_us)
        r = raw["rss"][name]
        fig.setdefault("RSS KB/open stream", {})[name] = r["bytes"] / 1024
        lv = raw["leaving"][name]
        fig.setdefault("tokens after leave, max", {})[name] = max(lv["after"])
        fig.setdefault("agents still running", {})[name] = lv["still_running"]
        fig.setdefault("agent stop ms, max", {})[name] = max(lv["stop_ms"], default=math.nan)
        fig.setdefault("client CPU max share", {})[name] = max(
            s.client_cpu for by in samples.values() for s in by[name])
        fig.setdefault("incomplete streams", {})[name] = sum(
            s.incomplete for by in samples.values() for s in by[name])
    return fig


def targets(fig: dict[str, dict[str, float]], plan: Plan) -> dict[str, dict[str, bool]]:
    """The issue's targets for each product variant: ``{target: {variant: ok}}``."""
    n, k = plan.concurrent, plan.unpaced_streams
    latency = [m for m in fig if m.startswith(("TTFC", "lag"))]
    out: dict[str, dict[str, bool]] = {}
    for name in PRODUCT:
        d = fig
        checks = {
            f"CPU/tok @10ms {n} str <= {CPU_TARGET_US:g} us":
                d[f"CPU us/tok @10ms, {n} str"][name] <= CPU_TARGET_US,
            "unpaced tok/s 1 str >= 0.5x direct":
                d["tok/s unpaced, 1 str"][name] >= 0.5 * d["tok/s unpaced, 1 str"][BASE],
            f"unpaced tok/s {k} str >= 0.5x direct":
                d[f"tok/s unpaced, {k} str"][name] >= 0.5 * d[f"tok/s unpaced, {k} str"][BASE],
            f"lag p99 {n} str <= 2x direct":
                d[f"lag p99 ms, {n} str"][name] <= 2 * d[f"lag p99 ms, {n} str"][BASE],
            "beats polling on every latency figure":
                all(d[m][name] < d[m]["polling"] for m in latency),
            "agent stops within 3 tokens of a disconnect":
                d["tokens after leave, max"][name] <= 3 and not d["agents still running"][name],
        }
        for target, ok in checks.items():
            out.setdefault(target, {})[name] = ok
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Start the servers, run the benchmark, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (~1 minute)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write figures as JSON")
    parser.add_argument("--store", action="store_true",
                        help="keep the embedded SQLite store on (default: persistence off)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    raise_fd_limit(8192)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_legacy_") as tmp:
        state_dir = Path(tmp) / "agents"
        state_dir.mkdir()
        env = {"PYTHONPATH": str(SCRIPTS), "BENCH_STATE_DIR": str(state_dir),
               "STREAMBRIDGE_AGENTS": "bench_legacy_apps:AGENTS",
               "STREAMBRIDGE_DEFAULT_AGENT": "bench", "STREAMBRIDGE_MAX_STREAMS": "2000",
               "STREAMBRIDGE_DRAIN_GRACE": "2", "PYTHONUNBUFFERED": "1"}
        servers: dict[str, BenchServer] = {}
        try:
            for v in VARIANTS:
                server = servers[v] = BenchServer(v, COMMANDS[v], {
                    **env, **VARIANT_ENV.get(v, {}), **store_env(v, args.store, Path(tmp))},
                    Path(tmp))
                server.roles_dir = state_dir
                log(f"{server.name}: pid {server.pid}, workers {server.worker_pids}, "
                    f"port {server.port}")
            raw = asyncio.run(benchmark(servers, plan, state_dir))
        finally:
            for server in servers.values():
                server.stop()
    fig = figures(raw, plan)
    ok = targets(fig, plan)
    print(f"1 worker each, loopback; gthread --threads {THREADS}; RSS with "
          f"{plan.open_threaded} open streams on gthread variants, {plan.open_async} on "
          f"gevent/async; store {'on' if args.store else 'off'}")
    print(render_tables(fig, ok, VARIANTS, PRODUCT, BASE, "target (issue 3)"))
    log(f"done in {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"plan": asdict(plan), "figures": fig,
                                         "targets": ok, "leaving": raw["leaving"],
                                         "rss": raw["rss"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
