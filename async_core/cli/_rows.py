"""The rows of ``streambridge compare`` that are more than one ``serve`` process.

Each is a real implementation of what the latency table our users quote names
(issue 13, "Speed"), measured in the same interleaved rounds as the paths:

- ``async-background``: the async path (memory log); ``"background": true`` answers
  202, then the stream is read with ``GET /v1/streams/{id}`` on the same server.
- ``async-redis``: two async servers on one Redis (``STREAMBRIDGE_REDIS_URL``); the
  run is started on the first (background), the second reads it through the Redis
  log (its multiplexed ``XREAD``), as a reconnect to another worker or host would.
- ``celery-pubsub``: a Celery worker (Redis broker) publishing each token with Redis
  pub/sub and a gunicorn gthread web handler polling its subscription (``_polled``).
- ``thread-queue``: a gunicorn gthread handler that runs the generation in a thread
  feeding a ``queue.Queue`` and polls it (``_polled``).

A row's time to first chunk counts from the user's first request (the ``POST``), and
its CPU is that of all its processes (Redis itself is not counted). Rows that need
Redis use ``--redis-url`` or a private ``redis-server`` started here.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from async_core.harness import Reader, RedisServer, StreamSample, read_stream, serve_command


@dataclass(frozen=True)
class Spawn:
    """One process of a row: its command, extra environment, and how it is ready."""

    cmd: list[str]
    env: dict[str, str]
    http: bool = True  # ready when it listens and answers /healthz; else by its log


def _serve(redis_url: str | None) -> Spawn:
    env = {"STREAMBRIDGE_REDIS_URL": redis_url} if redis_url else {}
    return Spawn(serve_command("async-auto"), env)


def _gthread(app: str, concurrency: int, env: dict[str, str]) -> Spawn:
    return Spawn([sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads",
                  str(max(8, concurrency) + 4), "-w", "1", "-b", "127.0.0.1:0",
                  f"async_core.cli._polled:{app}"], env)


def _celery(redis_url: str | None, concurrency: int) -> list[Spawn]:
    assert redis_url
    env = {"STREAMBRIDGE_REDIS_URL": redis_url}
    threads = str(max(8, concurrency) + 4)
    return [_gthread("web", concurrency, env),
            Spawn([sys.executable, "-m", "celery", "-A", "async_core.cli._polled",
                   "-b", redis_url.rsplit("/", 1)[0] + "/1", "worker", "--pool", "threads",
                   "--concurrency", threads, "-Q", "sbcompare", "--without-gossip",
                   "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"],
                  env, http=False)]


# row id -> (needs Redis, the processes it runs given the Redis URL and concurrency)
ROWS: dict[str, tuple[bool, Callable[[str | None, int], list[Spawn]]]] = {
    "async-background": (False, lambda url, _c: [_serve(None)]),
    "async-redis": (True, lambda url, _c: [_serve(url), _serve(url)]),
    "celery-pubsub": (True, _celery),
    "thread-queue": (False, lambda _url, c: [_gthread("web_thread", c, {})]),
}


def missing(row: str) -> str | None:
    """What this installation lacks to run ``row`` (None: nothing)."""
    if row in ("celery-pubsub", "thread-queue"):  # one module, _polled, serves both
        if importlib.util.find_spec("celery") is None:
            return f"the {row} row needs celery: pip install 'streambridge[compare]'"
    return None


def reader(row: str, bases: list[str]) -> Reader:
    """How one stream of ``row`` is read, given its processes' base URLs."""
    if row in ("celery-pubsub", "thread-queue"):
        return read_stream
    get_base = bases[-1]  # async-redis: the other server; async-background: the same

    async def read(client: httpx.AsyncClient, url: str, body: dict[str, Any], *,
                   path: str, epoch: float) -> StreamSample:
        t0 = time.perf_counter()
        try:
            r = await client.post(url, json={**body, "background": True})
        except httpx.HTTPError as exc:
            return StreamSample(path, t0 - epoch, error=type(exc).__name__)
        if r.status_code != 202:
            return StreamSample(path, t0 - epoch, error=f"HTTP {r.status_code}")
        return await read_stream(client, get_base + r.headers["location"], None, path=path,
                                 epoch=epoch, t0=t0)

    return read


class RedisUnavailable(Exception):
    """No Redis for the rows that need one (a one-line reason)."""


def start_redis() -> RedisServer:
    """Start a private ``redis-server`` on a loopback port (``async_core.harness``).

    Raises:
        RedisUnavailable: no ``redis-server`` binary, or it did not answer in 10 s.
    """
    if shutil.which("redis-server") is None:
        raise RedisUnavailable("redis-server not found (install it, or pass --redis-url)")
    try:
        return RedisServer()
    except RuntimeError as exc:
        raise RedisUnavailable(f"redis-server did not start: {str(exc).splitlines()[0]}"
                               ) from None


def check_redis(url: str) -> None:
    """Raise ``RedisUnavailable`` (one line, naming the URL) unless ``url`` answers PING."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise RedisUnavailable(f"--redis-url {url} is unreachable ({type(exc).__name__}: "
                               f"{exc})") from None
