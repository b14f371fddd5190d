"""``streambridge compare``: the same workload through every path, interleaved, side by side.

One server per path is started with the product's own CLI (``streambridge serve``)
on a free loopback port, found ready by polling ``/healthz``. Then rounds run:
in each round every path gets one batch of ``concurrency`` identical streams, in
an order rotated every round, so slow moments of a shared machine hit every path
alike. Results: a table (``_report.table``) and, on request, a self-contained
HTML report with charts (``_report.html``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from async_core.harness import (
    LISTEN,
    PATHS,
    Cost,
    ProcessTree,
    ServerProcess,
    StreamSample,
    read_stream,
    run_batch,
    serve_command,
)

# The rows that are one ``serve`` each: the row's name and the harness path it is served
# on (``async_core.harness.PATHS``; each one only where the CLI serves its ``--path``:
# legacy and hybrid come from their packages). ``async`` is uvicorn's own choice of
# loop, as a user's ``serve`` runs it. The rows of several processes are ``_rows``'.
PATH_ROWS: dict[str, str] = {
    "legacy-gthread": "legacy-gthread",
    "legacy-gevent": "legacy-gevent",
    "async": "async-auto",
    "hybrid-legacy": "hybrid-legacy",
    "hybrid-async": "hybrid-async",
}


def available_paths(served: Collection[str]) -> list[str]:
    """Path ids this installation can serve, given the ``--path`` values ``served``."""
    return [p for p, path_id in PATH_ROWS.items() if PATHS[path_id].serve in served]


def extra_rows(served: Collection[str]) -> list[str]:
    """The rows of ``_rows`` (background, Redis log, Celery): asked for by ``--paths``."""
    from ._rows import ROWS

    return list(ROWS) if "async" in served else []


@dataclass(frozen=True, kw_only=True)
class Workload:
    """What every path is asked to do.

    Attributes:
        paths: path ids, the first is the baseline of the ratios.
        concurrency: streams open at once per batch.
        tokens: deltas per stream (demo agent option).
        interval_ms: pause between deltas (demo agent pacing; 0: as fast as possible).
        rounds: batches per path (at least; see ``duration``).
        duration: if set, keep running rounds until this many seconds have passed.
        agent: the agent to stream from.
        env: extra ``STREAMBRIDGE_*`` settings for every server.
        redis_url: the Redis of the rows that need one (``_rows``); None: start one.
    """

    paths: Sequence[str]
    concurrency: int = 8
    tokens: int = 64
    interval_ms: float = 20.0
    rounds: int = 5
    duration: float | None = None
    agent: str = "demo"
    env: Mapping[str, str] = field(default_factory=dict)
    redis_url: str | None = None

    def body(self) -> dict[str, object]:
        """The chat request every stream sends."""
        return {"messages": [{"role": "user", "content": "compare"}], "agent": self.agent,
                "options": {"tokens": self.tokens, "interval_ms": self.interval_ms}}


@dataclass
class PathResult:
    """Everything measured on one path."""

    path: str
    samples: list[StreamSample] = field(default_factory=list)
    costs: list[Cost] = field(default_factory=list)
    batch_seconds: float = 0.0


def start_server(row: str, env: Mapping[str, str], cmd: list[str] | None = None, *,
                 http: bool = True) -> ServerProcess:
    """A ready process of one row: ``serve`` of its path (or ``cmd``, a ``_rows`` process).

    Args:
        row: a ``PATH_ROWS`` row (or a ``_rows`` row, with ``cmd``).
        env: extra environment.
        cmd: the command, when it is not ``serve`` of the row's path.
        http: whether it serves HTTP (ready at ``/healthz``) or is ready by its log (a
            Celery worker's `` ready.``; its ``base_url`` stays empty).

    Raises:
        RuntimeError: it did not start.
    """
    spec = PATHS[PATH_ROWS[row]] if cmd is None else None
    srv = ServerProcess(f"compare-{row}", cmd or serve_command(PATH_ROWS[row]), env={
        "PYTHONUNBUFFERED": "1", "STREAMBRIDGE_DRAIN_GRACE": "1",
        **(spec.env if spec else {}), **env}, listen=None if not http else LISTEN)
    if not http:
        try:
            srv.wait_log(" ready.")
        except BaseException:
            stop_server(srv)
            raise
    return srv


def stop_server(srv: ServerProcess) -> None:
    """SIGTERM the process (it drains), SIGKILL its group if it lingers; drop its log."""
    srv.stop(timeout=15)
    srv.log_path.unlink(missing_ok=True)


async def _drive(workload: Workload, servers: dict[str, list[ServerProcess]]
                 ) -> list[PathResult]:
    from ._rows import ROWS, reader

    results = {p: PathResult(p) for p in workload.paths}
    body = workload.body()
    limits = httpx.Limits(max_connections=workload.concurrency * 2,
                          max_keepalive_connections=workload.concurrency)
    clients = {p: httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120, connect=10))
               for p in workload.paths}
    trees = {p: ProcessTree(*(s.pid for s in servers[p]), live=True) for p in workload.paths}
    urls = {p: servers[p][0].base_url + "/v1/chat" for p in workload.paths}
    reads = {p: reader(p, [s.base_url for s in servers[p] if s.base_url]) if p in ROWS
             else read_stream for p in workload.paths}
    try:
        epoch = time.perf_counter()
        for p in workload.paths:  # warm-up: first-request costs are not what we compare
            await run_batch(trees[p], clients[p], urls[p], body, path=p, epoch=epoch,
                            concurrency=workload.concurrency, read=reads[p])
        epoch = time.perf_counter()
        n = 0
        while n < workload.rounds or (workload.duration is not None
                                      and time.perf_counter() - epoch < workload.duration):
            order = list(workload.paths)
            order = order[n % len(order):] + order[:n % len(order)]  # interleave fairly
            for p in order:
                t = time.perf_counter()
                samples, cost = await run_batch(
                    trees[p], clients[p], urls[p], body, path=p, epoch=epoch,
                    concurrency=workload.concurrency, read=reads[p])
                results[p].batch_seconds += time.perf_counter() - t
                results[p].samples += samples
                results[p].costs.append(cost)
            n += 1
            if workload.duration is not None and n >= workload.rounds and \
                    time.perf_counter() - epoch >= workload.duration:
                break
    finally:
        for c in clients.values():
            await c.aclose()
    return [results[p] for p in workload.paths]


def run(workload: Workload) -> list[PathResult]:
    """Start one server per path, drive the workload through all of them, stop them.

    Raises:
        ValueError: an unknown path id.
        RuntimeError: a server did not start.
        RedisUnavailable: a row needs Redis and there is none (a one-line reason).
    """
    from ._rows import ROWS, check_redis, start_redis

    unknown = [p for p in workload.paths if p not in PATH_ROWS and p not in ROWS]
    if unknown:
        raise ValueError(f"unknown path(s) {unknown}; known: {[*PATH_ROWS, *ROWS]}")
    redis_url, redis = workload.redis_url, None
    if any(ROWS[p][0] for p in workload.paths if p in ROWS):
        if redis_url:
            check_redis(redis_url)
        else:
            redis = start_redis()
            redis_url = redis.url
    servers: dict[str, list[ServerProcess]] = {}
    try:
        for p in workload.paths:
            group = servers[p] = []
            if p not in ROWS:
                group.append(start_server(p, workload.env))
                continue
            for spawn in ROWS[p][1](redis_url, workload.concurrency):
                group.append(start_server(p, {**workload.env, **spawn.env}, spawn.cmd,
                                          http=spawn.http))
        return asyncio.run(_drive(workload, servers))
    finally:
        for srv in (s for group in servers.values() for s in group):
            stop_server(srv)
        if redis is not None:
            redis.close()


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``streambridge compare`` to the CLI's subcommands."""
    p = sub.add_parser("compare", help="the same workload through every path, side by side "
                       "(TTFC, inter-chunk gaps, throughput, CPU and RSS per stream)")
    p.add_argument("--paths", default="", help="comma-separated path ids, the first is the "
                   f"baseline of the ratios (default: all of {', '.join(PATH_ROWS)})")
    p.add_argument("--concurrency", type=int, default=8, help="streams open at once per batch")
    p.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    p.add_argument("--interval-ms", type=float, default=20.0,
                   help="pacing of the demo agent between tokens; 0 for unpaced")
    p.add_argument("--rounds", type=int, default=5, help="batches per path (at least)")
    p.add_argument("--duration", type=float, default=None,
                   help="keep running rounds until this many seconds have passed")
    p.add_argument("--agent", default="demo", help="the agent to stream from")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra STREAMBRIDGE_* setting for every server (repeatable)")
    p.add_argument("--html", default=None, metavar="FILE",
                   help="also write a self-contained HTML report with charts")
    p.add_argument("--redis-url", default=None, metavar="URL",
                   help="the Redis of the async-redis and celery-pubsub rows (default: "
                   "start a private redis-server)")


def main(args: argparse.Namespace, served: Collection[str]) -> int:
    """The ``streambridge compare`` subcommand.

    Args:
        args: parsed by ``build_parser``.
        served: the ``serve --path`` values this installation has.
    """
    a = vars(args)
    problem = _check_args(a, available_paths(served) + extra_rows(served))
    if problem is not None:
        print(f"streambridge compare: {problem}", file=sys.stderr)
        return 2
    from . import _report

    paths = ([p.strip() for p in a["paths"].split(",")] if a["paths"]
             else available_paths(served))
    env = dict(kv.split("=", 1) for kv in a["env"])
    workload = Workload(paths=paths, concurrency=a["concurrency"], tokens=a["tokens"],
                        interval_ms=a["interval_ms"], rounds=a["rounds"],
                        duration=a["duration"], agent=a["agent"], env=env,
                        redis_url=a.get("redis_url"))
    from ._rows import RedisUnavailable

    try:
        results = run(workload)
    except RedisUnavailable as exc:
        print(f"streambridge compare: {exc}", file=sys.stderr)
        return 2
    print(_report.table(results, workload))
    if a["html"]:
        Path(a["html"]).write_text(_report.html(results, workload), encoding="utf-8")
        print(f"report written to {a['html']}")
    return 1 if any(s.error for r in results for s in r.samples) else 0


def _check_args(a: dict[str, object], available: list[str]) -> str | None:
    """What would stop ``compare`` late (after minutes of measuring), checked first."""
    if importlib.util.find_spec("psutil") is None:
        return "needs psutil: pip install 'streambridge[compare]'"
    bad_env = [kv for kv in a["env"] if "=" not in str(kv)]  # type: ignore[attr-defined]
    if bad_env:
        return f"--env expects KEY=VALUE, got {bad_env[0]!r}"
    html = a["html"]
    if html:
        target = Path(str(html))
        if target.is_dir():
            return f"--html {html}: is a directory; name a file"
        if not target.parent.is_dir():
            return f"--html {html}: the directory {target.parent} does not exist"
        if not os.access(target.parent, os.W_OK) or (
                target.exists() and not os.access(target, os.W_OK)):
            return f"--html {html}: not writable"
    unknown = [p.strip() for p in str(a["paths"]).split(",") if a["paths"]
               and p.strip() not in available]
    if unknown:
        return f"unknown path(s) {unknown}; available: {', '.join(available)}"
    from ._rows import missing

    lacking = [m for p in str(a["paths"]).split(",") if (m := missing(p.strip()))]
    return lacking[0] if lacking else None
