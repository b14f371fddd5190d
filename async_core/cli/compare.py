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
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:  # _latency needs psutil, which only the [compare] extra installs
    from ._latency import Cost, StreamSample

# Path ids and the ``serve`` arguments that start them (each one only where the CLI
# serves its ``--path``: legacy and hybrid come from their packages).
PATH_ARGS: dict[str, list[str]] = {
    "legacy-gthread": ["--path", "legacy", "--worker-class", "gthread"],
    "legacy-gevent": ["--path", "legacy", "--worker-class", "gevent"],
    "async": ["--path", "async"],
    "hybrid-legacy": ["--path", "hybrid"],
    "hybrid-async": ["--path", "hybrid"],
}
# The hybrid front at each end of the flag: every request to Flask, or every one native.
PATH_ENV: dict[str, dict[str, str]] = {
    "hybrid-legacy": {"STREAMBRIDGE_FLAGS_MODE": "legacy"},
    "hybrid-async": {"STREAMBRIDGE_FLAGS_MODE": "async"},
}
_LISTEN = re.compile(r"(?:Uvicorn running on|Listening at:) http://127\.0\.0\.1:(\d+) \(")


def available_paths(served: Collection[str]) -> list[str]:
    """Path ids this installation can serve, given the ``--path`` values ``served``."""
    return [p for p, args in PATH_ARGS.items() if args[1] in served]


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


class ServedPath:
    """A ``streambridge serve`` subprocess for one path.

    Args:
        path: a ``PATH_ARGS`` id (or a ``_rows`` row id, with ``cmd``).
        env: extra environment.
        cmd: the command, when it is not ``serve`` of ``path`` (a row's process).
        http: whether it serves HTTP (ready at ``/healthz``) or is ready by its log
            (a Celery worker's `` ready.``).
    """

    def __init__(self, path: str, env: Mapping[str, str], cmd: list[str] | None = None,
                 *, http: bool = True) -> None:
        self.path = path
        self.http = http
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix=f"sb-compare-{path}-", suffix=".log", delete=False)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "STREAMBRIDGE_DRAIN_GRACE": "1",
                    **PATH_ENV.get(path, {}), **env}
        cmd = cmd or [sys.executable, "-m", "async_core.cli", "serve", *PATH_ARGS[path],
                      "--port", "0"]  # the default log level prints the port we parse
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.base_url = ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll the log for the port, then ``/healthz`` for readiness (no fixed sleep)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.http and " ready." in Path(self.log.name).read_text(errors="replace"):
                return
            if not self.base_url:
                m = _LISTEN.search(Path(self.log.name).read_text(errors="replace"))
                if m:
                    self.base_url = f"http://127.0.0.1:{m.group(1)}"
            if self.base_url:
                try:
                    if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        log = Path(self.log.name).read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"{self.path} server did not start:\n{log}")

    def stop(self) -> None:
        """SIGTERM the server (it drains), SIGKILL its group if it lingers."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
        finally:
            self.log.close()
            Path(self.log.name).unlink(missing_ok=True)


async def _drive(workload: Workload, servers: dict[str, list[ServedPath]]
                 ) -> list[PathResult]:
    from ._latency import ProcessTree, read_stream, run_batch
    from ._rows import ROWS, reader

    results = {p: PathResult(p) for p in workload.paths}
    body = workload.body()
    limits = httpx.Limits(max_connections=workload.concurrency * 2,
                          max_keepalive_connections=workload.concurrency)
    clients = {p: httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120, connect=10))
               for p in workload.paths}
    trees = {p: ProcessTree(*(s.proc.pid for s in servers[p])) for p in workload.paths}
    urls = {p: servers[p][0].base_url + "/v1/chat" for p in workload.paths}
    reads = {p: reader(p, [s.base_url for s in servers[p] if s.http]) if p in ROWS
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

    unknown = [p for p in workload.paths if p not in PATH_ARGS and p not in ROWS]
    if unknown:
        raise ValueError(f"unknown path(s) {unknown}; known: {[*PATH_ARGS, *ROWS]}")
    redis_url, redis = workload.redis_url, None
    if any(ROWS[p][0] for p in workload.paths if p in ROWS):
        if redis_url:
            check_redis(redis_url)
        else:
            redis, redis_url, redis_dir = start_redis()
    servers: dict[str, list[ServedPath]] = {}
    try:
        for p in workload.paths:
            servers[p] = ([ServedPath(p, {**workload.env, **spawn.env}, spawn.cmd,
                                      http=spawn.http)
                           for spawn in ROWS[p][1](redis_url, workload.concurrency)]
                          if p in ROWS else [ServedPath(p, workload.env)])
        for srv in (s for group in servers.values() for s in group):
            srv.wait_ready()
        return asyncio.run(_drive(workload, servers))
    finally:
        for srv in (s for group in servers.values() for s in group):
            srv.stop()
        if redis is not None:
            redis.terminate()
            redis.wait(timeout=10)
            shutil.rmtree(redis_dir, ignore_errors=True)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``streambridge compare`` to the CLI's subcommands."""
    p = sub.add_parser("compare", help="the same workload through every path, side by side "
                       "(TTFC, inter-chunk gaps, throughput, CPU and RSS per stream)")
    p.add_argument("--paths", default="", help="comma-separated path ids, the first is the "
                   f"baseline of the ratios (default: all of {', '.join(PATH_ARGS)})")
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
