"""Admission control: concurrency slots held for a stream's whole life, and a rate limit.

Streams and buffered (``stream: false``) requests draw from separate pools, so
long streams never starve short requests. A slot is returned by calling the
release function that ``admit`` hands out; the engine calls it exactly once, on
every outcome (LiteLLM#27955 is what happens otherwise).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from aiolimiter import AsyncLimiter

from . import _metrics as metrics
from ._lifecycle import Lifecycle
from ._settings import Settings
from .exceptions import Overloaded, RateLimited, ShuttingDown

Release = Callable[[], None]


def both_releases(first: Release, second: Release) -> Release:
    """One release that runs ``first`` and then ``second``, even if ``first`` raises."""
    def release() -> None:
        try:
            first()
        finally:
            second()

    return release


class Admission:
    """Decides whether a request may start, and holds its slot.

    Args:
        settings: limits and the admission timeout.
        lifecycle: refuses everything once the server drains.
    """

    def __init__(self, settings: Settings, lifecycle: Lifecycle) -> None:
        self._settings = settings
        self._lifecycle = lifecycle
        self._streams = _pool(settings.max_streams)
        self._buffered = _pool(settings.max_buffered)
        self._per_agent: dict[str, asyncio.Semaphore] = {}
        self._weights = settings.weights()
        for scope, limit in (("global", settings.max_streams),
                             ("agent", settings.max_streams_per_agent),
                             ("key", settings.key_max_streams)):
            metrics.LIMIT_ENFORCED.labels(scope).set(limit or math.inf)
        self._limiter: AsyncLimiter | None = None
        if settings.rate_limit > 0:
            burst = settings.rate_burst or max(1, math.ceil(settings.rate_limit))
            self._limiter = AsyncLimiter(burst, burst / settings.rate_limit)

    async def start(self) -> None:
        """Nothing to open: the per-process limits live in this object."""

    async def aclose(self) -> None:
        """Nothing to close (see ``start``)."""

    async def view(self, agents: list[str]) -> dict[str, object]:
        """What ``GET /v1/limits`` shows for per-process limits (this process only)."""
        s = self._settings
        return {"backend": "process", "active_streams": self._lifecycle.active,
                "limits": {"global": s.max_streams or None,
                           "agent": s.max_streams_per_agent or None,
                           "key": s.key_max_streams or None}}

    async def gate(self) -> None:
        """Refuse a request while draining or over the rate; take no slot.

        Raises:
            ShuttingDown: the server is draining (503).
            RateLimited: over the request rate (429 with Retry-After).
        """
        if not self._lifecycle.ready:
            raise ShuttingDown("the server is shutting down", retry_after=1)
        limiter = self._limiter
        if limiter is not None:
            if not limiter.has_capacity():
                metrics.shed("global", "rate")
                raise RateLimited(
                    f"rate limit of {self._settings.rate_limit:g} requests/s exceeded",
                    retry_after=1 / self._settings.rate_limit)
            await limiter.acquire()

    async def admit(self, agent: str, *, buffered: bool = False, key: str = "") -> Release:
        """Wait for a slot (up to the admission timeout) and return its release function.

        Args:
            agent: the agent's name (its per-agent pool).
            buffered: a ``stream: false`` request (the separate buffered pool).
            key: the API key's id; per-process key limits are ``KeyLimits``' (unused here).

        Raises:
            ShuttingDown: the server is draining (503).
            RateLimited: over the request rate (429 with Retry-After).
            Overloaded: no slot freed in time (503 with Retry-After).
        """
        await self.gate()
        return await self.take(agent, buffered=buffered)

    async def take(self, agent: str, *, buffered: bool = False) -> Release:
        """Wait for a slot (up to the admission timeout) without the gate of ``admit``.

        Raises:
            Overloaded: no slot freed in time (503 with Retry-After).
        """
        held: list[asyncio.Semaphore] = []
        pools = [self._buffered if buffered else self._streams]
        if not buffered and self._settings.max_streams_per_agent > 0:
            pools.append(self._per_agent.setdefault(
                agent, asyncio.Semaphore(self._settings.max_streams_per_agent)))
        timeout = self._settings.admission_timeout
        scope = "buffered" if buffered else "global"
        # A weighted agent's stream takes ``weight`` slots of each pool, one at a time
        # (what it got so far is returned if the rest does not free in time).
        weight = 1 if buffered else self._weights.get(agent, 1)
        try:
            for pool in pools:
                if pool is not pools[0]:
                    scope = "agent"
                if pool is None:
                    continue
                for _ in range(weight):
                    if not pool.locked():
                        await pool.acquire()  # free: returns at once, no timer needed
                    elif timeout <= 0:
                        raise TimeoutError
                    else:
                        async with asyncio.timeout(timeout):
                            await pool.acquire()
                    held.append(pool)
        except TimeoutError:
            for pool in held:
                pool.release()
            what = "buffered requests" if buffered else "streams"
            metrics.shed(scope, "concurrency")
            raise Overloaded(f"too many concurrent {what}; no slot freed within "
                             f"{timeout:g} s", retry_after=max(1.0, timeout)) from None

        def release() -> None:
            while held:
                held.pop().release()

        return release


def _pool(size: int) -> asyncio.Semaphore | None:
    return asyncio.Semaphore(size) if size > 0 else None
