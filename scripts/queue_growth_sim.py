#!/usr/bin/env python
"""The unbounded-queue model from our streaming notes, then a real server beside it.

An agent producing ``rate`` items/s of ``size`` bytes for a reader that stalled
for ``stall`` seconds, behind an unbounded queue, holds q(t) = λt items and
m(t) = λ·s·t bytes. streambridge bounds that queue (``STREAMBRIDGE_BUFFER_SIZE``
items between agent and client; the agent blocks once it is full), so with a
stalled reader the server's memory stays flat. Part two starts a real server
(``async_core.harness``, the product's own CLI), opens a stream from the probe
agent at the same rate and size, never reads it, and samples the server's RSS.

Usage: scripts/queue_growth_sim.py --rate 5 --size 1024 --stall 10 [--path async]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def model(rate: float, size: int, t: float) -> tuple[float, float]:
    """q(t) = λt items and m(t) = λst bytes of an unbounded queue after t seconds."""
    return rate * t, rate * size * t


def measure(rate: float, size: int, stall: float, path_id: str, buffer: int) -> None:
    """Stream from a real server to a reader that never reads; print RSS each second."""
    from async_core.harness import PATHS, ProcessTree, RawStream, ServerProcess, serve_command

    # The tests' probe agent (its ``pad`` option sizes the items), loaded from the checkout.
    srv = ServerProcess(path_id, serve_command(path_id), cwd=REPO, env={
        "STREAMBRIDGE_AGENTS": "tests.probe_agents:AGENTS", "STREAMBRIDGE_HEARTBEAT": "0.25",
        "PYTHONUNBUFFERED": "1", **PATHS[path_id].env, "STREAMBRIDGE_BUFFER_SIZE": str(buffer),
        "STREAMBRIDGE_SEND_TIMEOUT": str(stall * 3), "STREAMBRIDGE_DATABASE_URL": "none"})
    try:
        rss = ProcessTree(srv.pid, live=True).rss

        tokens = int(rate * stall) + 100
        body = {"agent": "probe", "message": "x",
                "options": {"tokens": tokens, "interval_ms": 1000 / rate, "pad": size}}
        raw = RawStream(srv.port, "/v1/chat", body, rcvbuf=4096)
        raw.read_until(b"event: delta")  # the stream is running; now the reader stalls
        base = rss()  # after the first delta: warm-up (imports, first stream) excluded
        print(f"\nreal server ({path_id}, buffer {buffer} items), reader stalled:")
        print(f"{'t/s':>4} {'model q':>8} {'model m/B':>10} {'server queue':>13} "
              f"{'server RSS delta/B':>19}")
        for second in range(1, int(stall) + 1):
            time.sleep(1.0)
            q, m = model(rate, size, second)
            print(f"{second:4d} {q:8.0f} {m:10.0f} {'<= ' + str(buffer):>13} "
                  f"{rss() - base:19d}")
        raw.close()
    finally:
        srv.stop()


def main() -> int:
    """Print the model, then measure the real server."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5.0, help="items per second (λ)")
    parser.add_argument("--size", type=int, default=1024, help="bytes per item (s)")
    parser.add_argument("--stall", type=float, default=10.0, help="seconds the reader stalls")
    parser.add_argument("--path", default="async", help="server path id (async_core.harness.PATHS)")
    parser.add_argument("--buffer", type=int, default=8, help="STREAMBRIDGE_BUFFER_SIZE")
    parser.add_argument("--model-only", action="store_true", help="skip the real server")
    args = parser.parse_args()
    q, m = model(args.rate, args.size, args.stall)
    print(f"unbounded queue model: rate λ={args.rate:g}/s, size s={args.size} B, "
          f"stall t={args.stall:g} s")
    print(f"queue length: {q:.0f} items")
    print(f"approx memory: {m:.0f} bytes")
    if not args.model_only:
        measure(args.rate, args.size, args.stall, args.path, args.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
