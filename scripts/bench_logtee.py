"""Benchmark: what teeing every event into the memory stream log costs an attached stream.

In one process, no server: N concurrent ``StreamSession``s of an async agent (each
token paced by ``--interval-ms``; 0 never awaits) are read through ``frames()`` to
their end, once without a log (as before issue 13) and once with the memory log's
``LogTee``, in alternating rounds (the order flips every round, so background load on a
shared machine hits both). Printed per variant: process CPU per token (median of the
rounds) and the ratio tee / none from the same run.

    .venv/bin/python scripts/bench_logtee.py --streams 100 --tokens 300 --interval-ms 2
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator

from async_core import Agent, AgentRequest, SessionSettings, StreamInfo, StreamSession
from async_core._logtee import LogTee
from async_core.streamlog import MemoryLog
from async_core.wire import StreamMeta, make_encoder


def agent(tokens: int, interval: float) -> Agent:
    async def run(request: AgentRequest) -> AsyncIterator[str]:
        for i in range(tokens):
            if interval:
                await asyncio.sleep(interval)
            yield f"{i} "

    return Agent(name="bench", async_fn=run)


async def one(n: int, bench: Agent, log: MemoryLog | None) -> int:
    sid = f"s{n}-{time.monotonic_ns()}"
    meta = StreamMeta(stream_id=sid, conversation_id="c", model="bench", created=0.0)
    tee = None
    if log is not None:
        tee = LogTee(log, await log.create(sid, tenant="t", conversation_id="c"))
    request = AgentRequest(({"role": "user", "content": "hi"},), {}, "c", sid)
    session = StreamSession(SessionSettings(), agent=bench, request=request,
                            encoder=make_encoder("sse", meta),
                            info=StreamInfo(sid, "c", "bench", "async", "sse"), tee=tee)
    if tee is not None:
        tee.session = session
    size = 0
    async for frame in session.frames():
        size += len(frame)
    record = await session.finish()
    return record.tokens


async def phase(streams: int, bench: Agent, with_log: bool) -> float:
    log = MemoryLog() if with_log else None
    t0 = time.process_time()
    tokens = sum(await asyncio.gather(*(one(i, bench, log) for i in range(streams))))
    return (time.process_time() - t0) / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--interval-ms", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    bench = agent(args.tokens, args.interval_ms / 1000)
    results: dict[str, list[float]] = {"none": [], "tee": []}
    for r in range(args.rounds):
        order = ("none", "tee") if r % 2 == 0 else ("tee", "none")
        for name in order:
            results[name].append(asyncio.run(phase(args.streams, bench, name == "tee")))
    none, tee = (statistics.median(results[k]) for k in ("none", "tee"))
    print(f"{args.streams} streams x {args.tokens} tokens, interval {args.interval_ms} ms, "
          f"{args.rounds} rounds")
    print(f"  CPU per token, no log : {none * 1e6:7.2f} us")
    print(f"  CPU per token, tee    : {tee * 1e6:7.2f} us  ({tee / none:.2f}x)")


if __name__ == "__main__":
    main()
