"""What ``streambridge compare`` measures: one stream seen from the client, one server's cost.

Client side: each stream is read with httpx as SSE; the arrival time of every
``delta`` event is taken when its bytes reach us (``perf_counter``), so TTFC and
inter-chunk gaps include everything between the agent and the socket: engine,
bridge, server, kernel. Server side: CPU seconds and RSS of the server's whole
process tree (gunicorn arbiter and workers, or uvicorn), read with psutil.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

from async_core.wire import SSEDecoder


@dataclass
class StreamSample:
    """One stream as the client saw it.

    Attributes:
        path: the path id that served it.
        started: when the request was sent (seconds since the run began).
        arrivals: arrival of each delta event, seconds after the request was sent.
        tokens: tokens the server reported in ``done`` (0 if it never came).
        error: why the stream failed (``None`` when it ended with ``done``).
    """

    path: str
    started: float
    arrivals: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str | None = None

    @property
    def ttfc(self) -> float | None:
        """Seconds from the request to the first delta."""
        return self.arrivals[0] if self.arrivals else None

    def gaps(self) -> list[float]:
        """Seconds between consecutive deltas."""
        a = self.arrivals
        return [b - x for x, b in zip(a, a[1:], strict=False)]


async def read_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any] | None, *,
                      path: str, epoch: float, t0: float | None = None) -> StreamSample:
    """POST ``body`` to ``url`` (GET when ``body`` is None) and time every delta of the SSE reply.

    Args:
        client: the HTTP client (its pool is reused between batches, as browsers do).
        url: the chat URL (or a stream's ``GET /v1/streams/{id}``).
        body: the native chat body.
        path: the path id, recorded on the sample.
        epoch: ``perf_counter`` at the start of the run.
        t0: when the user's request was sent, if earlier than this one (a background
            run's ``POST``: its arrivals count from there).
    """
    t0 = time.perf_counter() if t0 is None else t0
    sample = StreamSample(path=path, started=t0 - epoch)
    decoder = SSEDecoder()
    try:
        async with client.stream("POST" if body is not None else "GET", url, json=body,
                                 headers={"Accept": "text/event-stream"}) as r:
            if r.status_code != 200:
                sample.error = f"HTTP {r.status_code}"
                await r.aread()
                return sample
            async for chunk in r.aiter_raw():
                now = time.perf_counter() - t0
                for msg in decoder.feed(chunk):
                    if msg.event == "delta":
                        sample.arrivals.append(now)
                    elif msg.event == "done":
                        sample.tokens = int(json.loads(msg.data).get("tokens", 0))
                    elif msg.event == "error":
                        sample.error = json.loads(msg.data).get("code", "error")
    except httpx.HTTPError as exc:
        sample.error = type(exc).__name__
    if sample.error is None and not sample.tokens:
        sample.error = "no terminal event"
    return sample


@dataclass
class Cost:
    """What a batch of streams cost the server.

    Attributes:
        cpu_seconds: user + system CPU of the process tree during the batch.
        rss_baseline: tree RSS (bytes) just before the batch.
        rss_peak: highest tree RSS seen while the batch ran.
        streams: streams in the batch.
    """

    cpu_seconds: float
    rss_baseline: int
    rss_peak: int
    streams: int


class ProcessTree:
    """The server process and its children (workers), measured together.

    Args:
        pid: the server's main process (the CLI execs gunicorn, so the PID stays).
        more: the other processes of a row that needs several (a second server, a
            Celery worker), measured with it.
    """

    def __init__(self, pid: int, *more: int) -> None:
        self.roots = [psutil.Process(p) for p in (pid, *more)]  # a row of several processes

    def _procs(self) -> list[psutil.Process]:
        procs = []
        for root in self.roots:
            try:
                procs += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return procs

    def cpu(self) -> float:
        """Total user + system CPU seconds of the tree so far."""
        total = 0.0
        for p in self._procs():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return total

    def rss(self) -> int:
        """Resident memory of the tree, in bytes."""
        total = 0
        for p in self._procs():
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total


Reader = Callable[..., Coroutine[Any, Any, StreamSample]]  # read_stream's signature


async def run_batch(tree: ProcessTree, client: httpx.AsyncClient, url: str,
                    body: dict[str, Any], *, path: str, epoch: float, concurrency: int,
                    sample_every: float = 0.02, read: Reader = read_stream
                    ) -> tuple[list[StreamSample], Cost]:
    """Run ``concurrency`` streams at once against one server and measure its cost.

    ``read`` reads one stream (``read_stream``, or a row's own way: ``_rows``).
    """
    cpu0, rss0 = tree.cpu(), tree.rss()
    peak = rss0
    tasks = [asyncio.create_task(read(client, url, body, path=path, epoch=epoch))
             for _ in range(concurrency)]
    pending: set[asyncio.Task[StreamSample]] = set(tasks)
    while pending:
        # Sample RSS while the streams are open: that is when their memory is held.
        _, pending = await asyncio.wait(pending, timeout=sample_every)
        peak = max(peak, tree.rss())
    return [t.result() for t in tasks], Cost(tree.cpu() - cpu0, rss0, peak, concurrency)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank (NaN if empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[rank]
