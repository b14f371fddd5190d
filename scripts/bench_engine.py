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
    With ``async_core.harness.StreamClient`` (raw asyncio HTTP/1.1, one connection
    per stream): every timestamp in each read counts as a token with its own lag,
    so engine deltas that coalesce several tokens count token by token.

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
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _benchlib import (
    UNPACED_RCVLOWAT,
    BenchServer,
    Phases,
    Sample,
    log,
    raise_fd_limit,
    rss_per_stream,
    uvicorn_cmd,
)

from async_core.harness import percentile

APPS = ("engine", "baseline")
FACTORIES = {"engine": "bench_apps:engine_app", "baseline": "bench_apps:baseline_app"}
SATURATED = 0.90


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
    bursts: tuple[int, ...] = (50, 500)  # new streams at once (TTFC of a burst)
    burst_rounds: int = 3
    phase_timeout: float = 120.0


QUICK = Plan(ttfc_requests=20, paced_tokens=100, single_rounds=1, concurrent=50,
             concurrent_rounds=1, unpaced_tokens=5_000, unpaced_rounds=2, unpaced_streams=10,
             unpaced_multi_rounds=1, open_streams=200, bursts=(50,), burst_rounds=1,
             phase_timeout=30.0)


# -- phases ----------------------------------------------------------------------------


async def benchmark(servers: dict[str, BenchServer], plan: Plan) -> dict[str, Any]:
    """Run every phase on both servers, interleaved, and return the raw samples."""
    paced: dict[str, Any] = {"tokens": plan.paced_tokens, "interval_ms": plan.interval_ms}
    unpaced: dict[str, Any] = {"tokens": plan.unpaced_tokens, "interval_ms": 0}
    phases = Phases(servers, plan.phase_timeout)
    await phases.warm_up()

    # First, on fresh heaps: later phases leave freed memory that new streams reuse.
    log(f"RSS with {plan.open_streams} open streams")
    rss: dict[str, float] = {}
    rss_client: dict[str, float] = {}
    for app in servers:
        rss[app], rss_client[app] = await rss_per_stream(servers[app], plan.open_streams,
                                                         plan.phase_timeout)

    log(f"TTFC, {plan.ttfc_requests} sequential 1-token requests per app")
    await phases.run("ttfc1", plan.ttfc_requests, 1, {"tokens": 1})
    for phase, streams, rounds in (("paced1", 1, plan.single_rounds),
                                   ("pacedN", plan.concurrent, plan.concurrent_rounds)):
        log(f"{streams} stream(s) x {plan.paced_tokens} tokens @ {plan.interval_ms:g} ms, "
            f"{rounds} rounds")
        await phases.run(phase, rounds, streams, paced, keep_lags=True)
    for n in plan.bursts:
        log(f"burst of {n} new streams x 5 tokens @ 10 ms, {plan.burst_rounds} rounds")
        await phases.run(f"burst{n}", plan.burst_rounds, n, {"tokens": 5, "interval_ms": 10})
    for phase, streams, rounds in (("unpaced1", 1, plan.unpaced_rounds),
                                   ("unpacedN", plan.unpaced_streams, plan.unpaced_multi_rounds)):
        log(f"unpaced {streams} x {plan.unpaced_tokens} tokens, {rounds} rounds")
        await phases.run(phase, rounds, streams, unpaced, rcvlowat=UNPACED_RCVLOWAT)
    return {"samples": phases.samples, "rss": rss, "rss_client": rss_client}


# -- report ----------------------------------------------------------------------------


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


def summarize(raw: dict[str, Any], plan: Plan, engine: str = "engine"
              ) -> tuple[list[Row], dict[str, Any]]:
    """Turn the samples of ``engine`` (or ``before``) and the baseline into table rows and
    the diagnostics (client CPU, errors)."""
    apps = (engine, "baseline")
    samples: dict[str, dict[str, list[Sample]]] = raw["samples"]

    def pooled(phase: str, app: str, attr: str) -> list[float]:
        return [v for s in samples[phase][app] for v in getattr(s, attr)]

    def median(phase: str, app: str, fn: Callable[[Sample], float]) -> float:
        return statistics.median(fn(s) for s in samples[phase][app])

    def ms(values: list[float], p: float) -> float:
        return percentile(values, p / 100) * 1000

    def rate(s: Sample) -> float:
        return s.tokens / s.wall

    def cpu_us(s: Sample) -> float:
        return s.server_cpu / s.tokens * 1e6 if s.tokens else math.nan

    n, u, k = plan.concurrent, plan.unpaced_tokens, plan.unpaced_streams
    rows: list[Row] = []
    for label, phases in (("1 stream", ("ttfc1", "paced1")), (f"{n} streams", ("pacedN",))):
        ttfc = {a: [v for ph in phases for v in pooled(ph, a, "ttfc")] for a in apps}
        lags = {a: pooled(phases[-1], a, "lags") for a in apps}
        rows += [
            Row(f"TTFC p50, {label}", "ms", ms(ttfc[engine], 50), ms(ttfc["baseline"], 50),
                "<=1.1"),
            Row(f"TTFC p99, {label}", "ms", ms(ttfc[engine], 99), ms(ttfc["baseline"], 99)),
            Row(f"lag p50, {label}", "ms", ms(lags[engine], 50), ms(lags["baseline"], 50),
                "<=1.2" if label != "1 stream" else ""),
            Row(f"lag p99, {label}", "ms", ms(lags[engine], 99), ms(lags["baseline"], 99),
                "<=1.2" if label != "1 stream" else ""),
        ]
    rows.append(Row(f"server CPU/token, {n} paced", "us", median("pacedN", engine, cpu_us),
                    median("pacedN", "baseline", cpu_us), "<=1.2"))
    for b in plan.bursts:
        ttfc = {a: pooled(f"burst{b}", a, "ttfc") for a in apps}
        rows += [Row(f"TTFC p{p}, burst of {b}", "ms", ms(ttfc[engine], p),
                     ms(ttfc["baseline"], p), target) for p, target in ((50, ""), (99, "<=1.5"))]
    for phase, label in (("unpaced1", f"1x{u}"), ("unpacedN", f"{k}x{u}")):
        rows += [
            Row(f"tokens/s unpaced, {label}", "tok/s", median(phase, engine, rate),
                median(phase, "baseline", rate), ">=1.0"),
            Row(f"server CPU/token, {label}", "us", median(phase, engine, cpu_us),
                median(phase, "baseline", cpu_us), "<=1.5"),
        ]
    rows.append(Row(f"RSS per open stream ({plan.open_streams})", "KB",
                    raw["rss"][engine] / 1024, raw["rss"]["baseline"] / 1024, "<=1.5"))
    client_cpu = {f"{phase}/{app}": max(s.client_cpu for s in by_app[app])
                  for phase, by_app in samples.items() for app in apps}
    client_cpu.update({f"rss/{app}": v for app, v in raw["rss_client"].items()})
    incomplete = {f"{phase}/{app}": sum(s.incomplete for s in by_app[app])
                  for phase, by_app in samples.items() for app in apps}
    extra = {"client_cpu_max_share": client_cpu,
             "incomplete_streams": {k2: v for k2, v in incomplete.items() if v},
             "lag_samples": {a: len(pooled("pacedN", a, "lags")) for a in apps},
             "ttfc_samples": {a: len(pooled("ttfc1", a, "ttfc")) for a in apps}}
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


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, start both servers, run the benchmark, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30-second smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write figures as JSON")
    parser.add_argument("--before", metavar="DIR", help="also run the engine of another "
                        "checkout (PYTHONPATH=DIR, e.g. a `git archive main`), same run")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    raise_fd_limit(plan.open_streams * 2 + 1024)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
        servers: dict[str, BenchServer] = {}
        try:
            for app in APPS:  # uvicorn alone: no children to measure
                server = servers[app] = BenchServer(app, uvicorn_cmd(FACTORIES[app]), {},
                                                    Path(tmp), children=False)
                log(f"{server.name}: pid {server.pid}, port {server.port}")
            if args.before:
                servers["before"] = BenchServer("before", uvicorn_cmd(FACTORIES["engine"]),
                                                {"PYTHONPATH": args.before}, Path(tmp),
                                                children=False)
            raw = asyncio.run(benchmark(servers, plan))
        finally:
            for server in servers.values():
                server.stop()
    rows, extra = summarize(raw, plan)
    print(render(rows, extra))
    if args.before:
        print(f"\nthe engine of {args.before}, same run:")
        print(render(*summarize(raw, plan, "before")))
    log(f"done in {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"plan": asdict(plan), "rows": [asdict(r) for r in rows],
                                         **extra}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
