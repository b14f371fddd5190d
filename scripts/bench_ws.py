"""Benchmark: per-token lag over the WebSocket against SSE on the same path, same run.

What is compared
    One ``streambridge serve`` process per path (``async``; ``hybrid-100``: the hybrid
    front, chat routes native, ``/v1/ws`` always native; ``legacy-gthread`` and
    ``legacy-gevent``: gunicorn, the socket taken over by simple-websocket, its frames
    written by the worker's loop), serving the benchmark agent
    of ``bench_apps.py`` (tokens are their own production wall time). On each path,
    ``--streams`` concurrent streams of ``--tokens`` tokens paced at ``--pace-ms``:

    - ``sse``: ``POST /v1/chat`` read by ``bench_engine.StreamClient`` (raw HTTP/1.1);
    - ``ws``: one ``websockets`` client socket per stream, ``{"type": "start"}``,
      read until its ``done`` (offering permessage-deflate as a browser does, unless
      ``--no-deflate``; the server declines it).

    lag = the client's wall time when a frame is read − the token's production time,
    for every token. Rounds alternate the order of ``sse`` and ``ws`` so background
    load on the shared machine hits both alike; samples are pooled over rounds. The
    target (issue 15): WS lag p50 within 1.2x of SSE's at 1 and 100 streams.

500 sockets (``--sockets 500``)
    That many sockets at once on one async worker, one stream each: every stream must
    get exactly one ``done`` and all its tokens within a bound; wall time, server CPU,
    peak RSS and lag are printed.

Run: ``.venv/bin/python scripts/bench_ws.py [--streams 1,100] [--tokens 100] [--rounds 2]``
     ``.venv/bin/python scripts/bench_ws.py --sockets 500``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _benchlib import SCRIPTS, BenchServer, log, pct, raise_fd_limit
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
)
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from async_core.harness import PATHS, chat_request, open_streams, serve_command, wait_all

STAMP = re.compile(r"\d{10}\.\d{6}")
RAW_STAMP = re.compile(rb"\d{10}\.\d{6}")
TARGET = 1.2
ENV = {"STREAMBRIDGE_AGENTS": "bench_apps:AGENTS",
       "PYTHONPATH": f"{SCRIPTS}:{SCRIPTS.parent}", "STREAMBRIDGE_HEARTBEAT": "60",
       "STREAMBRIDGE_DATABASE_URL": "none", "STREAMBRIDGE_MAX_STREAMS": "2000"}


def start_server(path: str, log_dir: Path) -> BenchServer:
    """``streambridge serve`` on ``path`` (an ``async_core.harness.PATHS`` id), started."""
    return BenchServer(path, serve_command(path), {**PATHS[path].env, **ENV}, log_dir)


class WsClient(asyncio.Protocol):
    """One socket read straight off the transport: ``websockets``' sans-IO client for the
    handshake and the ``start`` message, then, as ``async_core.harness.StreamClient`` reads
    SSE, timestamps found in the raw bytes (the server's frames are neither masked nor,
    deflate declined, compressed), so both clients cost about the same per token and
    the lag is the server's. Closed at the terminal event."""

    def __init__(self, port: int, options: dict[str, Any], deflate: bool) -> None:
        extensions = [ClientPerMessageDeflateFactory()] if deflate else None
        self.proto = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/v1/ws"),
                                    extensions=extensions, max_size=None)
        self.start = json.dumps({"type": "start", "agent": "bench", "message": "bench",
                                 "options": options}).encode()
        self.tokens, self.dones, self.errors = 0, 0, 0
        self.lags: list[float] = []
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._carry = b""
        self._raw = False  # scanning raw bytes (no extension was negotiated)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.proto.send_request(self.proto.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        wall = time.time()
        if self._raw:
            self._scan(data, wall)
            return
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if not isinstance(event, Frame):  # the handshake's response: nothing follows
                self.proto.send_text(self.start)  # it before the start
                self._raw = not self.proto.extensions
            elif event.opcode is Opcode.TEXT:
                self._message(event.data.decode(), wall)
        self._flush()

    def _scan(self, data: bytes, wall: float) -> None:
        buf = self._carry + data
        last = 0
        for found in RAW_STAMP.finditer(buf):
            self.tokens += 1
            self.lags.append(wall - float(found.group()))
            last = found.end()
        if b'"event":"done"' in buf:
            self.dones += 1
            self.close()
        elif b'"event":"error"' in buf:
            self.errors += 1
            self.close()
        # what follows the last stamp, at most a stamp's length: a stamp or a marker
        # cut by this read is completed by the next, and none is counted twice
        self._carry = buf[max(last, len(buf) - 17):]

    def _message(self, raw: str, wall: float) -> None:
        if '"event":"delta"' in raw:
            stamps = STAMP.findall(raw)
            self.tokens += len(stamps)
            self.lags.extend(wall - float(s) for s in stamps)
        elif '"event":"done"' in raw:
            self.dones += 1
            self.close()
        elif '"event":"error"' in raw:
            self.errors += 1
            if '"id":null' not in raw:  # a terminal error: the stream is over
                self.close()

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.proto.data_to_send()))

    def close(self) -> None:
        """Drop the connection (the stream has ended, or the run is aborted)."""
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def ws_streams(port: int, count: int, options: dict[str, Any], deflate: bool,
                     max_wait: float) -> list[WsClient]:
    """``count`` sockets, one stream each, read to their ends (bounded by ``max_wait``)."""
    loop = asyncio.get_running_loop()
    clients = [WsClient(port, options, deflate) for _ in range(count)]
    gate = asyncio.Semaphore(200)

    async def open_one(client: WsClient) -> None:
        async with gate:
            await loop.create_connection(lambda: client, "127.0.0.1", port)

    try:
        await asyncio.wait_for(asyncio.gather(*(open_one(c) for c in clients)), max_wait)
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), max_wait)
    finally:
        for c in clients:
            c.close()
    return clients


async def phase(kind: str, server: BenchServer, streams: int, options: dict[str, Any],
                deflate: bool, max_wait: float) -> tuple[list[float], int, float]:
    """Run ``streams`` concurrent streams over ``kind``; (lags, incomplete, CPU s)."""
    cpu0, client0 = server.cpu(), time.process_time()
    if kind == "sse":
        clients = await open_streams(server.port, streams,
                                     chat_request(server.port, options), keep_lags=True)
        await wait_all(clients, server.name, max_wait, lambda c: c.closed)
        lags = [lag for c in clients for lag in c.lags]
        bad = sum(not c.complete or c.tokens != options["tokens"] for c in clients)
    else:
        results = await ws_streams(server.port, streams, options, deflate, max_wait)
        lags = [lag for r in results for lag in r.lags]
        bad = sum(r.dones != 1 or r.tokens != options["tokens"] for r in results)
    used = server.cpu() - cpu0
    log(f"  client CPU {time.process_time() - client0:.2f} s, server {used:.2f} s")
    return lags, bad, used


async def compare(paths: Sequence[str], counts: Sequence[int], tokens: int, pace_ms: float,
                  rounds: int, deflate: bool, log_dir: Path) -> int:
    """SSE against WS on each path at each concurrency; print the table."""
    options = {"tokens": tokens, "interval_ms": pace_ms}
    max_wait = 30 + tokens * pace_ms / 1000 * 3
    rows, missed = [], 0
    for path in paths:
        server = start_server(path, log_dir)
        try:
            for kind in ("sse", "ws"):  # warm-up: first-use costs are not the transport's
                await phase(kind, server, 2, {"tokens": 5, "interval_ms": 1}, deflate, max_wait)
            for count in counts:
                pooled: dict[str, list[float]] = {"sse": [], "ws": []}
                cpu: dict[str, float] = {"sse": 0.0, "ws": 0.0}
                for r in range(rounds):
                    for kind in ("sse", "ws") if r % 2 == 0 else ("ws", "sse"):
                        log(f"{path}: {count} {kind} stream(s), round {r + 1}")
                        lags, bad, used = await phase(kind, server, count, options, deflate,
                                                      max_wait)
                        if bad:
                            raise RuntimeError(f"{path} {kind}: {bad} incomplete streams")
                        pooled[kind] += lags
                        cpu[kind] += used
                sse50, ws50 = pct(pooled["sse"], 50), pct(pooled["ws"], 50)
                ratio = ws50 / sse50
                missed += ratio > TARGET
                per_token = {k: cpu[k] / (count * tokens * rounds) * 1e6 for k in cpu}
                rows.append((path, count, sse50, pct(pooled["sse"], 99), ws50,
                             pct(pooled["ws"], 99), ratio, per_token["sse"], per_token["ws"]))
        finally:
            server.stop()
    print(f"\n{tokens} tokens per stream at {pace_ms:g} ms, {rounds} rounds, "
          f"client offers deflate: {'yes' if deflate else 'no'}; lag in ms, "
          "server CPU in us per token\n")
    print("| path | streams | SSE p50 | SSE p99 | WS p50 | WS p99 | WS/SSE p50 | "
          "CPU SSE | CPU WS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path, count, s50, s99, w50, w99, ratio, c_sse, c_ws in rows:
        mark = "" if ratio <= TARGET else " (over 1.2)"
        print(f"| {path} | {count} | {s50 * 1e3:.2f} | {s99 * 1e3:.2f} | {w50 * 1e3:.2f} | "
              f"{w99 * 1e3:.2f} | {ratio:.2f}{mark} | {c_sse:.0f} | {c_ws:.0f} |")
    return 1 if missed else 0


async def many_sockets(count: int, tokens: int, pace_ms: float, deflate: bool,
                       log_dir: Path) -> int:
    """``count`` sockets at once on one async worker: exactly one ``done`` each."""
    options = {"tokens": tokens, "interval_ms": pace_ms}
    server = start_server("async", log_dir)
    try:
        cpu0, rss0 = server.cpu(), server.rss()
        peak = rss0
        t0 = time.monotonic()
        bound = 60 + tokens * pace_ms / 1000 * 4
        run = asyncio.ensure_future(ws_streams(server.port, count, options, deflate, bound))
        while not run.done() and time.monotonic() - t0 < bound:
            peak = max(peak, server.rss())
            await asyncio.sleep(0.1)
        results = await asyncio.wait_for(run, 1)
        wall = time.monotonic() - t0
        cpu = server.cpu() - cpu0
    finally:
        server.stop()
    dones = [r.dones for r in results]
    lags = [lag for r in results for lag in r.lags]
    whole = sum(r.tokens == tokens for r in results)
    print(f"\n{count} sockets, one stream each ({tokens} tokens at {pace_ms:g} ms): "
          f"{wall:.1f} s wall; done per stream {sorted(set(dones))}; whole {whole}/{count}; "
          f"errors {sum(r.errors for r in results)}")
    print(f"server CPU {cpu:.1f} s ({cpu / (count * tokens) * 1e6:.0f} us per token); peak "
          f"RSS +{(peak - rss0) / 2**20:.1f} MiB ({(peak - rss0) / count / 1024:.0f} KiB per "
          f"socket); lag p50 {pct(lags, 50) * 1e3:.1f} ms, p99 {pct(lags, 99) * 1e3:.1f} ms")
    return 0 if set(dones) == {1} and whole == count else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run the comparison, or the many-sockets check."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", default="async,hybrid-100,legacy-gthread,legacy-gevent")
    parser.add_argument("--streams", default="1,100", help="concurrencies, comma-separated")
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--pace-ms", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-deflate", action="store_true")
    parser.add_argument("--sockets", type=int, default=0,
                        help="instead: this many concurrent sockets on one async worker")
    args = parser.parse_args(argv)
    raise_fd_limit(4 * max(args.sockets, 1000))
    with tempfile.TemporaryDirectory(prefix="sb-bench-ws-") as logs:
        if args.sockets:
            return asyncio.run(many_sockets(args.sockets, args.tokens, args.pace_ms,
                                            not args.no_deflate, Path(logs)))
        counts = [int(n) for n in args.streams.split(",")]
        return asyncio.run(compare(args.paths.split(","), counts, args.tokens, args.pace_ms,
                                   args.rounds, not args.no_deflate, Path(logs)))


if __name__ == "__main__":
    sys.exit(main())
