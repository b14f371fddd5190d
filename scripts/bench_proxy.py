"""Benchmark, proxy mode: fake upstream → streambridge → client, on every path.

What is compared
    One fake upstream (``tests/fake_upstream.py``, a raw asyncio HTTP server on
    127.0.0.1) streams Ollama ``/api/chat`` NDJSON whose tokens are their own send
    wall time (``"1712345678.123456 "``), paced at ``--pace-ms``. It is read:

    - ``direct``: by the client itself (the baseline: no proxy at all);
    - through ``streambridge serve`` on each path (``legacy-gthread`` with
      ``--threads 128``, ``legacy-gevent``, ``async`` on asyncio and on uvloop),
      asking the ``ollama`` agent for the same script; each path runs its own twin
      (sync on legacy, async on async). Native SSE to the client;
    - through each peer of ``scripts/_proxy_peers.py`` (bare Starlette + httpx on
      both loops, an sse-starlette relay, bare Flask + ``requests`` under gunicorn
      gthread and gevent), asked Ollama's own request.

How it is measured
    ``async_core.harness.StreamClient`` (raw asyncio HTTP/1.1, one connection a stream)
    finds every timestamp in each read, so coalesced deltas count token by token.

    - TTFC: request written → first token read (perf_counter).
    - lag: read wall time − the upstream's send wall time, for every token.
    - added TTFC p50 = TTFC p50 through the target − TTFC p50 direct at the same
      stream count (p99 likewise, and lag likewise): what the proxy adds.
    - CPU: the target's process tree (gunicorn's worker included), per token.

    Targets (issue 16): streambridge async and legacy-gevent ahead of every peer on
    each figure at 1 and 100 streams; legacy-gthread within 1.5x of the Flask
    gthread passthrough. Each round runs every target at every count, the order
    reversed between rounds so background load on the shared 2-core machine hits
    all alike; samples are pooled over rounds. Loopback only; every process is ours
    and is stopped by PID.

Run: ``.venv/bin/python scripts/bench_proxy.py [--streams 1,100] [--rounds 3]
[--paths ...] [--peers ...]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _benchlib import REPO, pct, raise_fd_limit
from _proxy_peers import PEERS, peer_command

from async_core.harness import (
    ProcessTree,
    ServerProcess,
    StreamClient,
    http_request,
    open_streams,
    serve_command,
    wait_all,
)

EXTRA_ARGS = {"legacy-gthread": ["--threads", "128"]}  # paths: async_core.harness.PATHS
API_KEY = "sk-fake-upstream-key"
LISTEN = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


def start_upstream(log_dir: Path) -> ServerProcess:
    """The tests' fake upstream (``tests/fake_upstream.py``), run from the checkout as a
    peer process on an ephemeral port (its listening line names the port)."""
    return ServerProcess("upstream", [sys.executable, "-m", "tests.fake_upstream", "--port",
                                      "0", "--api-key", API_KEY], env={"PYTHONUNBUFFERED": "1"},
                         cwd=REPO, listen=LISTEN, health=None, log_dir=log_dir)


def direct_request(port: int, script: dict[str, Any]) -> bytes:
    """The baseline: Ollama's own request, straight to the fake upstream."""
    return http_request(port, "/api/chat", {
        "model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers={"X-Fake-Script": json.dumps(script)})


def proxy_request(port: int, script: dict[str, Any]) -> bytes:
    """Through streambridge: the native route, the ``ollama`` agent, the same script (the
    last message ``{"fake": script}`` programs the fake upstream)."""
    return http_request(port, "/v1/chat", {"agent": "ollama", "messages": [
        {"role": "user", "content": json.dumps({"fake": script})}]},
        headers={"Accept": "text/event-stream"})


async def phase(port: int, request: bytes, streams: int, max_wait: float) -> list[StreamClient]:
    """Open ``streams`` connections, send all requests at once, read every stream to its end."""
    clients = await open_streams(port, streams, request, keep_lags=True)
    try:
        await wait_all(clients, "phase", max_wait, lambda c: c.closed, check_status=False)
    finally:
        for c in clients:
            c.close()
    return clients


async def run(args: argparse.Namespace, upstream: ServerProcess,
              servers: dict[str, ServerProcess]) -> dict[tuple[str, int], dict[str, list[float]]]:
    script = {"clock": True, "tokens": args.tokens, "pace_ms": args.pace_ms}
    requests = {"direct": (upstream.port, direct_request(upstream.port, script))}
    for name, srv in servers.items():
        requests[name] = (srv.port, _request(name, srv.port, script))
    warm = {**script, "tokens": 5}
    for name, (port, _) in requests.items():  # pools, imports, first connections
        await phase(port, _request(name, port, warm), min(max(args.streams), 20), 30)
    cpus = {"upstream": ProcessTree(upstream.pid),
            "client": ProcessTree(os.getpid(), children=False),
            **{name: ProcessTree(srv.pid) for name, srv in servers.items()}}
    spies = start_py_spy(args.py_spy, {"upstream": upstream.pid,
                                       **{n: srv.pid for n, srv in servers.items()}})
    try:
        return await measure(args, requests, servers, cpus)
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)


def _request(name: str, port: int, script: dict[str, Any]) -> bytes:
    """A peer and the baseline are asked Ollama's own request; streambridge its native one."""
    if name == "direct" or name in PEERS:
        return direct_request(port, script)
    return proxy_request(port, script)


def start_py_spy(out_dir: str, pids: dict[str, int]) -> list[subprocess.Popen[bytes]]:
    """py-spy (``PY_SPY``, default the venv's) on each process tree, GIL only."""
    if not out_dir:
        return []
    os.makedirs(out_dir, exist_ok=True)
    exe = os.environ.get("PY_SPY", str(Path(sys.executable).parent / "py-spy"))
    spies = [subprocess.Popen([exe, "record", "--gil", "--nonblocking", "--subprocesses",
                               "-f", "raw", "-r", "200", "-p", str(pid),
                               "-o", os.path.join(out_dir, f"{name}.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, pid in pids.items()]
    time.sleep(1.0)  # attached before the first measured phase
    return spies


async def measure(args: argparse.Namespace, requests: dict[str, tuple[int, bytes]],
                  servers: dict[str, ServerProcess], cpus: dict[str, ProcessTree],
                  ) -> dict[tuple[str, int], dict[str, list[float]]]:
    """The measured rounds: every target at every stream count, the order alternating
    between rounds (and the counts interleaved) so background load hits all alike."""
    keys = [(name, n) for n in args.streams for name in requests]
    samples: dict[tuple[str, int], dict[str, list[float]]] = {
        k: {"ttfc": [], "lag": [], "tokens": [], "bad": [], "srv": []} for k in keys}
    max_wait = 30 + args.tokens * args.pace_ms / 1000 * 3
    for round_no in range(args.rounds):
        for name, streams in keys if round_no % 2 == 0 else keys[::-1]:
            port, request = requests[name]
            before = cpus[name].cpu() if name in cpus else 0.0
            started = time.monotonic()
            clients = await phase(port, request, streams, max_wait)
            wall = time.monotonic() - started
            await asyncio.sleep(0.25)  # what the streams' ends still cost is theirs
            s = samples[name, streams]
            s["ttfc"] += [c.ttfc * 1000 for c in clients if c.ttfc is not None]
            s["lag"] += [lag * 1000 for c in clients for lag in c.lags]
            s["tokens"].append(sum(c.tokens for c in clients))
            s["bad"].append(sum(1 for c in clients if c.status != 200 or
                                c.tokens != args.tokens))
            s["srv"].append(cpus[name].cpu() - before if name in cpus else 0.0)
            print(f"  round {round_no + 1} {name:<22} x{streams:<4} {wall:5.2f} s",
                  file=sys.stderr, flush=True)
    return samples


def render(samples: dict[tuple[str, int], dict[str, list[float]]],
           args: argparse.Namespace) -> str:
    """One table per stream count: what each target adds to ``direct`` at that count.

    ``+TTFC``/``+lag`` are the target's percentile minus direct's same percentile;
    ``CPU/tok`` is µs of the proxy's CPU (its whole process tree, connection setup
    and teardown included) per token delivered. The load average is the machine's
    at the end of the run (the machine is shared).
    """
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [f"proxy mode: {args.tokens} tokens at {args.pace_ms:g} ms, {args.rounds} "
             f"interleaved round(s), one worker each; ms, CPU in us/token; load avg {load}"]
    for n in args.streams:
        d = samples["direct", n]
        base = {(k, q): pct(d[k], q) for k in ("ttfc", "lag") for q in (50, 99)}
        lines += ["", f"{n} concurrent stream(s): direct TTFC p50/p99 "
                  f"{base['ttfc', 50]:.2f}/{base['ttfc', 99]:.2f}, lag p50/p99 "
                  f"{base['lag', 50]:.2f}/{base['lag', 99]:.2f}",
                  f"{'target':<23}{'bad':>4}{'+TTFC p50':>10}{'+TTFC p99':>10}"
                  f"{'+lag p50':>9}{'+lag p99':>9}{'CPU/tok':>8}"]
        for (name, count), s in samples.items():
            if count != n or name == "direct":
                continue
            added = [pct(s[k], q) - base[k, q] for k in ("ttfc", "lag") for q in (50, 99)]
            cpu = sum(s["srv"]) / max(1.0, sum(s["tokens"])) * 1e6
            lines.append(f"{name:<23}{int(sum(s['bad'])):>4}{added[0]:>10.2f}{added[1]:>10.2f}"
                         f"{added[2]:>9.2f}{added[3]:>9.2f}{cpu:>8.0f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the fake upstream, one server per path and per peer, run the rounds, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1,100",
                        help="comma-separated concurrent stream counts")
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--pace-ms", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--paths", default="legacy-gthread,legacy-gevent,async,async-uvloop",
                        help="comma-separated streambridge paths (async_core.harness.PATHS)")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help="comma-separated peers (scripts/_proxy_peers.py); '' for none")
    parser.add_argument("--before", default="", metavar="DIR",
                        help="a checkout of the code before a change (git archive main | "
                             "tar -x -C DIR): each path also runs from it, as PATH@before")
    parser.add_argument("--py-spy", default="", metavar="DIR",
                        help="record each server (and the upstream) with py-spy --gil "
                             "during the measured rounds; raw profiles go to DIR")
    args = parser.parse_args(argv)
    args.streams = [int(n) for n in args.streams.split(",")]
    most = max(args.streams)
    raise_fd_limit(4 * most + 256)
    tmp = Path(tempfile.mkdtemp(prefix="sb-bench-proxy-"))
    upstream = start_upstream(tmp)
    servers: dict[str, ServerProcess] = {}
    try:
        env = {"STREAMBRIDGE_OLLAMA_URL": upstream.base_url,
               "STREAMBRIDGE_OPENAI_BASE_URL": upstream.base_url + "/v1",
               "STREAMBRIDGE_OPENAI_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1",
               "STREAMBRIDGE_MAX_STREAMS": str(2 * most + 50),
               "STREAMBRIDGE_HEARTBEAT": "15", "STREAMBRIDGE_DRAIN_GRACE": "2"}
        paths = list(filter(None, args.paths.split(",")))
        # python -m (and gunicorn) import from the working directory first: a path run
        # from the --before checkout serves the old code, measured in the same rounds.
        for name, cwd in [*((p, REPO) for p in paths),
                          *((f"{p}@before", Path(args.before)) for p in paths if args.before)]:
            path = name.removesuffix("@before")
            servers[name] = ServerProcess(name, serve_command(path, args=EXTRA_ARGS.get(
                path, [])), env={**env, "STREAMBRIDGE_DATABASE_PATH": str(tmp / f"{name}.db")},
                cwd=cwd, log_dir=tmp)
        for peer in filter(None, args.peers.split(",")):
            servers[peer] = ServerProcess(peer, peer_command(peer), cwd=REPO, log_dir=tmp, env={
                "PEER_UPSTREAM": upstream.base_url, "PYTHONUNBUFFERED": "1"})
        samples = asyncio.run(run(args, upstream, servers))
    finally:
        for srv in servers.values():
            srv.stop()
        upstream.stop(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(render(samples, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
