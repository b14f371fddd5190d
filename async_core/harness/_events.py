"""One stream seen from the client, event by event, and what a batch of them cost the server.

Each stream is read with httpx and decoded (SSE or NDJSON, by its content type); the
arrival of every ``delta`` is taken when its bytes reach us (``perf_counter``), so
TTFC and inter-chunk gaps include everything between the agent and the socket:
engine, bridge, server, kernel. ``streambridge compare`` measures with this.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx

from async_core.wire import NDJSONDecoder, SSEDecoder

from ._measure import ProcessTree


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

    def see(self, at: float, event: str | None, data: dict[str, Any]) -> None:
        """Record one decoded event that arrived ``at`` seconds after the request."""
        if event == "delta":
            self.arrivals.append(at)
        elif event == "done":
            self.tokens = int(data.get("tokens", 0))
        elif event == "error":
            self.error = data.get("code", "error")


async def read_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any] | None, *,
                      path: str, epoch: float, t0: float | None = None,
                      accept: str = "text/event-stream") -> StreamSample:
    """POST ``body`` to ``url`` (GET when ``body`` is None) and time every delta of the reply.

    Args:
        client: the HTTP client (its pool is reused between batches, as browsers do).
        url: the chat URL (or a stream's ``GET /v1/streams/{id}``).
        body: the native chat body.
        path: the path id, recorded on the sample.
        epoch: ``perf_counter`` at the start of the run.
        t0: when the user's request was sent, if earlier than this one (a background
            run's ``POST``: its arrivals count from there).
        accept: ``text/event-stream`` (SSE) or ``application/x-ndjson``.
    """
    t0 = time.perf_counter() if t0 is None else t0
    sample = StreamSample(path=path, started=t0 - epoch)
    try:
        async with client.stream("POST" if body is not None else "GET", url, json=body,
                                 headers={"Accept": accept}) as r:
            if r.status_code != 200:
                sample.error = f"HTTP {r.status_code}"
                await r.aread()
                return sample
            sse = r.headers.get("content-type", "").startswith("text/event-stream")
            sse_decoder, ndjson_decoder = SSEDecoder(), NDJSONDecoder()
            async for chunk in r.aiter_raw():
                now = time.perf_counter() - t0
                if sse:
                    for msg in sse_decoder.feed(chunk):
                        sample.see(now, msg.event, json.loads(msg.data)
                                   if msg.event in ("done", "error") else {})
                else:
                    for obj in ndjson_decoder.feed(chunk):
                        sample.see(now, obj.get("event"), obj)
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


Reader = Callable[..., Coroutine[Any, Any, StreamSample]]  # read_stream's signature


async def run_batch(tree: ProcessTree, client: httpx.AsyncClient, url: str,
                    body: dict[str, Any], *, path: str, epoch: float, concurrency: int,
                    sample_every: float = 0.02, read: Reader = read_stream
                    ) -> tuple[list[StreamSample], Cost]:
    """Run ``concurrency`` streams at once against one server and measure its cost.

    ``read`` reads one stream (``read_stream``, or a row's own way: ``cli/_rows``).
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
