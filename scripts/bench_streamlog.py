"""Benchmark: streams read live through the Redis stream log against the memory log.

What is compared
    Memory: one process, one ``MemoryLog`` that the producer and the reader share
    (which is what the memory backend is). Redis: the producer's ``RedisLog`` in this
    process and every reader in a second process (this script with ``--reader``), so
    every token goes producer → Redis → the reader process' one multiplexed
    ``XREAD BLOCK``, as between two workers or hosts. A private ``redis-server``
    (Debian package) runs on a loopback ephemeral port with ``--save ''
    --appendonly no``, stopped by its PID.

How it is measured
    - lag: each delta carries its append time (``perf_counter``); lag is receive time
      minus that, for every token of every stream; "added" is Redis minus memory.
    - round trips per token: the producer's pipelines (one per batch) and the reader's
      ``XREAD`` calls, each divided by the tokens; ``EVALSHA`` calls from
      ``INFO commandstats`` as a cross-check.
    - connections: ``CLIENT LIST`` entries named after the reader instance while 100
      streams are followed live.
    - resume: time for a fresh reader to replay a finished 10,000-event stream.
    - CPU per token: ``time.process_time`` over the paced phase divided by the tokens,
      for the memory process, and for the Redis producer and reader processes (their
      sum over memory is the ratio); Redis server CPU (``INFO cpu``) separately. Each
      process' CPU over the phase's wall time says whether the bench client itself is
      CPU-bound (near 100 %).
    - where the Redis lag goes: the mean flush (pipeline sent to reply), entries per
      flush and per ``XREAD``; the memory log's own lag is the bench client's share.
    - rounds alternate (memory, Redis, memory, Redis, ...: ``--rounds``), so a change
      of the machine's load hits both; the load average is printed before and after.
      The event loop is uvloop when importable (what uvicorn picks), else asyncio.
    - ``--gc compare``: rounds alternate CPython's collector settings and tuned ones
      (``_benchlib.set_gc``: ``gc.freeze`` plus higher thresholds, in both processes);
      each mode's rows, and every round's full collections (count, longest pause).

Run: ``.venv/bin/python scripts/bench_streamlog.py [--tokens 200] [--streams 100]
[--rounds 2] [--loop uvloop|asyncio] [--gc default|compare]``
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import time
from typing import Any

import redis
from _benchlib import GcPauses, set_gc

from async_core.harness import RedisServer, percentile
from async_core.streamlog import Entry, LogSettings, MemoryLog, RedisLog


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (0-100, nearest rank) of values (seconds), in ms."""
    return 1000 * percentile(values, p / 100)


async def run_streams(producer: Any, reader: Any, n: int, tokens: int, pace: float,
                      tag: str) -> tuple[list[float], float]:
    """n streams of `tokens` deltas every `pace` s; return every lag and CPU seconds."""
    lags: list[float] = []

    async def read(sid: str) -> None:
        async for item in reader.read(sid, None):
            if isinstance(item, Entry) and item.event == "delta":
                lags.append(time.perf_counter() - item.data["t"])

    async def produce(sid: str) -> None:
        lease = await producer.create(sid, tenant="t", conversation_id="c")
        task = asyncio.create_task(read(sid))
        await asyncio.sleep(0.05)  # the reader is following live before the first token
        start = time.perf_counter()
        for i in range(tokens):
            producer.append(lease, "delta", {"text": "tok ", "t": time.perf_counter()})
            await asyncio.sleep(max(0.0, start + (i + 1) * pace - time.perf_counter()))
        await producer.finish(lease, "done", {"finish_reason": "stop"})
        await task

    cpu = time.process_time()
    await asyncio.gather(*(produce(f"{tag}-{i}") for i in range(n)))
    return lags, time.process_time() - cpu


async def resume(producer: Any, reader: Any, events: int, sid: str) -> float:
    """Append a finished stream of `events` deltas; time a fresh full replay of it."""
    lease = await producer.create(sid, tenant="t", conversation_id="c")
    for i in range(events):
        producer.append(lease, "delta", {"text": f"{i} "})
        if i % 1000 == 999:
            await asyncio.sleep(0)
    await producer.finish(lease, "done", {})
    t0 = time.perf_counter()
    count = 0
    async for _item in reader.read(sid, None):
        count += 1
    assert count == events + 1, count
    return time.perf_counter() - t0


async def reader_main(url: str, gc_mode: str, sids: list[str]) -> None:
    """The reader process: follow `sids` live, print its lags and CPU as JSON."""
    set_gc(gc_mode)
    pauses = GcPauses()
    log = await RedisLog.open(LogSettings(redis_url=url), owner="bench-reader", sweeper=False)
    lags: list[float] = []

    async def read(sid: str) -> None:
        async for item in log.read(sid, None):
            if isinstance(item, Entry) and item.event == "delta":
                lags.append(time.perf_counter() - item.data["t"])  # CLOCK_MONOTONIC: system-wide

    tasks = [asyncio.create_task(read(sid)) for sid in sids]
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    cpu, wall, reads = time.process_time(), time.perf_counter(), log.mux.reads
    await asyncio.gather(*tasks)
    print(json.dumps({"lags": lags, "cpu": time.process_time() - cpu, "gc": pauses.take(),
                      "wall": time.perf_counter() - wall, "xreads": log.mux.reads - reads}))
    await log.aclose()


async def run_two_processes(producer: RedisLog, url: str, n: int, tokens: int, pace: float,
                            tag: str, loop: str, gc_mode: str
                            ) -> tuple[list[float], float, dict[str, Any], list[int]]:
    """The Redis phase with the reader in its own process (as in a deployment).

    Returns the lags, producer CPU, the reader's figures (``cpu``, ``wall``,
    ``xreads``) and its connections."""
    sids = [f"{tag}-{i}" for i in range(n)]
    leases = [await producer.create(sid, tenant="t", conversation_id="c") for sid in sids]
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--reader", loop, gc_mode, url, *sids,
        stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    assert (await child.stdout.readline()).strip() == b"ready"
    names = [c["name"] for c in redis.Redis.from_url(url).client_list()]
    conns = [sum(1 for x in names if x.startswith("sb-bench-reader")),
             sum(1 for x in names if x == "sb-bench-reader-reader")]

    async def produce(lease: Any) -> None:
        start = time.perf_counter()
        for i in range(tokens):
            producer.append(lease, "delta", {"text": "tok ", "t": time.perf_counter()})
            await asyncio.sleep(max(0.0, start + (i + 1) * pace - time.perf_counter()))
        await producer.finish(lease, "done", {"finish_reason": "stop"})

    cpu = time.process_time()
    await asyncio.gather(*(produce(lease) for lease in leases))
    cpu = time.process_time() - cpu
    out = json.loads(await child.stdout.read())
    await child.wait()
    return out["lags"], cpu, out, conns


def server_cpu(url: str) -> float:
    """redis-server's user+system CPU seconds so far."""
    info = redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def load() -> str:
    """The machine's load averages (others run tests on it)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def phase(memory: MemoryLog, producer: RedisLog, url: str, n: int,
                args: argparse.Namespace, rnd: int, gc_mode: str) -> dict[str, Any]:
    """One round at n streams: the memory log, then the same through Redis."""
    pace, tokens = args.pace_ms / 1000, n * args.tokens
    set_gc(gc_mode)
    PAUSES.take()
    wall = time.perf_counter()
    m_lags, m_cpu = await run_streams(memory, memory, n, args.tokens, pace, f"m{n}-{rnd}")
    m_wall = time.perf_counter() - wall
    r = redis.Redis.from_url(url)
    flushes, fsec = producer.flushes, producer.flush_seconds
    evals = int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    scpu, wall = server_cpu(url), time.perf_counter()
    r_lags, r_cpu, rd, conns = await run_two_processes(
        producer, url, n, args.tokens, pace, f"r{n}-{rnd}", args.loop, gc_mode)
    r_wall = time.perf_counter() - wall
    flushes, fsec = producer.flushes - flushes, producer.flush_seconds - fsec
    (gcn, gcmax), (rgcn, rgcmax) = PAUSES.take(), rd["gc"]
    return {"m": m_lags, "r": r_lags, "figures": {
        "producer round trips/token": flushes / tokens,
        "EVALSHA calls/token": (int(r.info("commandstats")["cmdstat_evalsha"]["calls"])
                                - evals) / tokens,
        "reader XREADs/token": rd["xreads"] / tokens,
        "entries/flush": tokens / max(1, flushes),
        "entries/XREAD": tokens / max(1, rd["xreads"]),
        "flush (send to reply) mean ms": 1000 * fsec / max(1, flushes),
        "reader connections (all)": conns[0], "reader blocking connections": conns[1],
        "CPU µs/token memory": 1e6 * m_cpu / tokens,
        "CPU µs/token redis producer": 1e6 * r_cpu / tokens,
        "CPU µs/token redis reader": 1e6 * rd["cpu"] / tokens,
        "CPU redis (both)/memory": (r_cpu + rd["cpu"]) / m_cpu,
        "redis-server CPU µs/token": 1e6 * (server_cpu(url) - scpu) / tokens,
        "CPU % memory process": 100 * m_cpu / m_wall,
        "CPU % redis producer": 100 * r_cpu / r_wall,
        "CPU % redis reader": 100 * rd["cpu"] / rd["wall"],
        "full GCs producer (both phases)": gcn, "longest full GC producer ms": gcmax,
        "full GCs redis reader": rgcn, "longest full GC redis reader ms": rgcmax,
        "tokens received redis": len(r_lags), "tokens received memory": len(m_lags)}}


def lag_rows(m: list[float], r: list[float]) -> dict[str, float]:
    """Lag percentiles of the memory and Redis reads and the difference."""
    return {"lag p50 memory ms": pct(m, 50), "lag p99 memory ms": pct(m, 99),
            "lag p50 redis ms": pct(r, 50), "lag p99 redis ms": pct(r, 99),
            "added lag p50 ms": pct(r, 50) - pct(m, 50),
            "added lag p99 ms": pct(r, 99) - pct(m, 99)}


async def main() -> None:
    if sys.argv[1:2] == ["--reader"]:
        await reader_main(sys.argv[4], sys.argv[3], sys.argv[5:])
        return
    args = parse_args()
    redis_server = RedisServer()
    url = redis_server.url
    settings = LogSettings(redis_url=url, log_maxlen=max(5000, args.resume_events + 10))
    rows: dict[str, dict[str, Any]] = {"machine": {"load average before": load(),
                                                   "event loop": args.loop}}
    try:
        memory = MemoryLog(LogSettings(log_maxlen=max(5000, args.resume_events + 10)))
        producer = await RedisLog.open(settings, owner="bench-producer")
        reader = await RedisLog.open(settings, owner="bench-resumer", sweeper=False)
        modes = ["default", "tuned"] if args.gc == "compare" else ["default"]
        for n in sorted({1, args.streams}):  # --streams 1: once (the ids are per n)
            rounds = [(modes[i % len(modes)], await phase(
                memory, producer, url, n, args, i, modes[i % len(modes)]))
                for i in range(args.rounds * len(modes))]
            for i, (mode, rnd) in enumerate(rounds):
                rows[f"{n} stream(s), round {i + 1} (gc {mode})"] = {
                    **lag_rows(rnd["m"], rnd["r"]),
                    **{k: v for k, v in rnd["figures"].items() if "GC" in k}}
            for mode in modes:
                mine = [rnd for m, rnd in rounds if m == mode]
                rows[f"{n} stream(s), all rounds (gc {mode})"] = {
                    **lag_rows([x for rnd in mine for x in rnd["m"]],
                               [x for rnd in mine for x in rnd["r"]]),
                    **{k: sum(rnd["figures"][k] for rnd in mine) / len(mine)
                       for k in mine[0]["figures"]}}
            set_gc("default")
        rows["resume"] = {
            f"memory {args.resume_events} events ms":
                1000 * await resume(memory, memory, args.resume_events, "resume-m"),
            f"redis {args.resume_events} events ms":
                1000 * await resume(producer, reader, args.resume_events, "resume-r"),
        }
        await reader.aclose()
        await producer.aclose()
    finally:
        redis_server.close()
    rows["machine"]["load average after"] = load()
    print(f"stream log benchmark: {args.tokens} tokens/stream at {args.pace_ms} ms pacing, "
          f"{args.rounds} alternating rounds, redis-py {redis.__version__}")
    for name, fig in rows.items():
        print(f"\n## {name}")
        for k, v in fig.items():
            print(f"  {k:32} {v:10.3f}" if isinstance(v, float) else f"  {k:32} {v:>10}")


def parse_args() -> argparse.Namespace:
    """The command line (the loop is installed by ``__main__``)."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--tokens", type=int, default=200, help="tokens per stream")
    ap.add_argument("--streams", type=int, default=100, help="concurrent streams, big phase")
    ap.add_argument("--pace-ms", type=float, default=10.0)
    ap.add_argument("--resume-events", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2, help="alternating memory/Redis rounds")
    ap.add_argument("--gc", choices=("default", "compare"), default="default",
                    help="compare: rounds alternate default and tuned collector settings")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"),
                    default="uvloop" if importlib.util.find_spec("uvloop") else "asyncio")
    return ap.parse_args()


def use_loop(name: str) -> None:
    """Install uvloop's event loop policy when asked (both processes use the same)."""
    if name == "uvloop":
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


PAUSES = GcPauses()

if __name__ == "__main__":
    use_loop(sys.argv[2] if sys.argv[1:2] == ["--reader"] else parse_args().loop)
    asyncio.run(main())
