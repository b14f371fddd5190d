"""Benchmark: what the transcript store costs a paced stream, per path (store on − off).

What is compared (one run, every server up at once, 1 worker each, 127.0.0.1)
    For each path (``async``, ``legacy-gthread``, ``legacy-gevent`` by default) two
    ``streambridge serve`` processes streaming the same agent (``bench_legacy_apps``:
    its async twin on the async path, the sync generator through the janus seam on the
    legacy paths): one with persistence off (``STREAMBRIDGE_DATABASE_URL=none``), one
    with the embedded SQLite store in the run's temporary directory, checkpointing
    every ``STREAMBRIDGE_CHECKPOINT_INTERVAL`` s / ``_TOKENS`` deltas (the defaults
    unless ``--interval``/``--tokens``). ``--postgres URL`` adds a third server per
    path writing to that PostgreSQL database (migrated first).

How it is measured
    ``rounds`` rounds of ``streams`` concurrent streams × ``tokens`` tokens at
    ``interval_ms``, the servers' order rotated every round (``_benchlib.Phases``).

    - CPU µs/token: user+system CPU of the server's process tree (``/proc`` via
      psutil) over the phase / tokens received. "store" is the median over rounds of
      (on − off) measured in the same round, so background load hits both alike.
    - lag: receive wall time − production wall time, every token.
    - switches/token: voluntary context switches of the tree's threads / tokens.
    - load average (1 min) before and after: the machine is shared.

Usage
    ``.venv/bin/python scripts/bench_store.py [--quick] [--rounds N] [--paths ...]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _benchlib import SCRIPTS, BenchServer, Phases, Sample, log, raise_fd_limit

from async_core.harness import percentile, serve_command

PATHS = ("async", "legacy-gthread", "legacy-gevent")
TARGET_US = 10.0
THREADS = "256"  # gthread: a thread per open stream


def variants(paths: Sequence[str], postgres: str | None) -> list[tuple[str, str, str]]:
    """(variant, path id, store) of every server: ``off``, ``sqlite`` or ``postgres``."""
    stores = ("off", "sqlite", *(("postgres",) if postgres else ()))
    return [(f"{p}" if s == "off" else f"{p}+{s}", p, s) for p in paths for s in stores]


def server_env(path: str, store: str, name: str, tmp: Path, args: argparse.Namespace
               ) -> dict[str, str]:
    """The environment of one server: the agent, its store and the checkpoint settings."""
    env = {"PYTHONPATH": str(SCRIPTS), "STREAMBRIDGE_AGENTS": "bench_legacy_apps:AGENTS",
           "STREAMBRIDGE_DEFAULT_AGENT": "bench", "STREAMBRIDGE_MAX_STREAMS": "2000",
           "STREAMBRIDGE_DRAIN_GRACE": "2", "PYTHONUNBUFFERED": "1",
           "STREAMBRIDGE_AGENT_FORM": "async" if path.startswith("async") else "sync"}
    if store == "off":
        env["STREAMBRIDGE_DATABASE_URL"] = "none"
    elif store == "sqlite":
        env["STREAMBRIDGE_DATABASE_PATH"] = str(tmp / f"{name}.sqlite3")
    else:
        env["STREAMBRIDGE_DATABASE_URL"] = args.postgres
    if args.interval is not None:
        env["STREAMBRIDGE_CHECKPOINT_INTERVAL"] = str(args.interval)
    if args.tokens_every is not None:
        env["STREAMBRIDGE_CHECKPOINT_TOKENS"] = str(args.tokens_every)
    return env


def cpu_us(s: Sample) -> float:
    """Server CPU µs per token received in one sample."""
    return s.server_cpu / s.tokens * 1e6 if s.tokens else math.nan


def figures(samples: dict[str, list[Sample]], servers: Sequence[tuple[str, str, str]]
            ) -> dict[str, dict[str, float]]:
    """``{variant: {figure: value}}``; "store us/tok" pairs each round with its baseline."""
    out: dict[str, dict[str, float]] = {}
    for name, path, store in servers:
        by = samples[name]
        lags = [v for s in by for v in s.lags]
        fig = out[name] = {
            "CPU us/tok": statistics.median(cpu_us(s) for s in by),
            "lag p50 ms": percentile(lags, 0.5) * 1e3,
            "lag p99 ms": percentile(lags, 0.99) * 1e3,
            "switches/tok": statistics.median(s.switches / s.tokens if s.tokens else math.nan
                                              for s in by),
            "incomplete": float(sum(s.incomplete for s in by)),
        }
        if store != "off":
            base = samples[path]
            fig["store us/tok"] = statistics.median(
                cpu_us(on) - cpu_us(off) for on, off in zip(by, base, strict=True))
    return out


def render(fig: dict[str, dict[str, float]], title: str) -> str:
    """The figures as a table, one row per variant."""
    cols = ("CPU us/tok", "store us/tok", "lag p50 ms", "lag p99 ms", "switches/tok",
            "incomplete")
    head = f"{'variant':<24}" + "".join(f"{c:>14}" for c in cols)
    lines = [title, head, "-" * len(head)]
    for name, by in fig.items():
        cells = [f"{by[c]:.4g}" if c in by else "-" for c in cols]
        lines.append(f"{name:<24}" + "".join(f"{c:>14}" for c in cells))
    met = [f"{n}: {'yes' if by['store us/tok'] <= TARGET_US else 'NO'}"
           for n, by in fig.items() if "store us/tok" in by]
    lines.append(f"target store <= {TARGET_US:g} us/token: " + ", ".join(met))
    return "\n".join(lines)


async def benchmark(servers: dict[str, BenchServer], args: argparse.Namespace
                    ) -> dict[str, list[Sample]]:
    """Warm every server up, then the interleaved paced rounds."""
    phases = Phases(servers, args.max_wait)
    await phases.warm_up()
    log(f"{args.streams} streams x {args.tokens} tokens @ {args.interval_ms:g} ms, "
        f"{args.rounds} rounds")
    await phases.run("paced", args.rounds, args.streams,
                     {"tokens": args.tokens, "interval_ms": args.interval_ms}, keep_lags=True)
    return phases.samples["paced"]


async def migrate(url: str) -> None:
    """Bring the PostgreSQL database to the head revision (servers refuse an old schema)."""
    from async_core.store import create_engine, upgrade

    engine = create_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    """Start the servers, run the rounds, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (1 round, 30 streams)")
    parser.add_argument("--paths", nargs="+", default=list(PATHS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    parser.add_argument("--interval", type=float, help="STREAMBRIDGE_CHECKPOINT_INTERVAL")
    parser.add_argument("--tokens-every", type=int, help="STREAMBRIDGE_CHECKPOINT_TOKENS")
    parser.add_argument("--postgres", metavar="URL", help="also a PostgreSQL store per path")
    parser.add_argument("--max-wait", type=float, default=120.0)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write figures as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.streams, args.tokens = 1, 30, 100
    raise_fd_limit(8192)
    if args.postgres:
        asyncio.run(migrate(args.postgres))
    plan = variants(args.paths, args.postgres)
    load0, started = os.getloadavg()[0], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_store_") as tmp:
        servers: dict[str, BenchServer] = {}
        try:
            for name, path, store in plan:
                extra = ["--threads", THREADS] if path == "legacy-gthread" else []
                servers[name] = BenchServer(name, serve_command(path, args=extra),
                                            server_env(path, store, name, Path(tmp), args),
                                            Path(tmp))
                log(f"{name}: pid {servers[name].pid}, port {servers[name].port}")
            samples = asyncio.run(benchmark(servers, args))
        finally:
            for server in servers.values():
                server.stop()
    fig = figures(samples, plan)
    print(render(fig, f"1 worker each, loopback; {args.streams} streams x {args.tokens} tokens "
                      f"@ {args.interval_ms:g} ms, {args.rounds} rounds; load average "
                      f"{load0:.1f} before, {os.getloadavg()[0]:.1f} after"))
    log(f"done in {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
