"""Cluster admission: the stream limits as slot leases in Redis (issue 14).

Same interface as ``Admission`` (``admit`` returns a release to call exactly once).
With ``STREAMBRIDGE_REDIS_URL`` set, a stream takes one lease per scope that has a
limit: ``global`` (``MAX_STREAMS``), ``agent:<name>`` (``MAX_STREAMS_PER_AGENT``),
``key:<id>`` (``KEY_MAX_STREAMS``; a key's buffered requests count too). A full scope
sheds at once (503, Retry-After): no request waits on a cluster slot. The rates
(``RATE_LIMIT``, ``KEY_RATE_LIMIT``) are GCRA cells judged in the same script call
(429, Retry-After). The buffered pool stays per process (``Admission``).

One heartbeat task per process renews every lease it holds, every
``slot_lease_renew`` seconds, in one round trip: nothing is done per token. Release
removes the slot from the heartbeat's set at once and from Redis in a task; if Redis
misses that, the lease expires by itself.

States (``STREAMBRIDGE_LIMITS_ON_REDIS_FAILURE`` names what DEGRADED does)::

    HEALTHY ──a call to Redis fails──► DEGRADED ──a heartbeat's renewal answers──► HEALTHY

DEGRADED is logged once and shown by ``streambridge_limits_degraded{mode}``; while in
it, admission does not call Redis: ``closed`` sheds every stream (503
``limits_unavailable``), ``open`` admits without a concurrency limit, ``local`` applies
the cluster limits and rates divided by ``STREAMBRIDGE_LIMITS_WORKERS`` in this process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math

from redis.exceptions import RedisError

from . import _metrics as metrics
from ._admission import Admission, Release, both_releases
from ._leases import SlotLeases, Verdict, members
from ._lifecycle import Lifecycle
from ._settings import Settings
from .auth import KeyLimits, Principal
from .exceptions import ConfigError, Overloaded, RateLimited

log = logging.getLogger("streambridge.limits")

# What counts as "Redis does not answer" (redis-py raises its own errors, and OSError
# or a TimeoutError from the socket layer can escape it).
_UNREACHABLE = (RedisError, OSError, TimeoutError)


class ClusterAdmission:
    """Admission whose stream limits are leases in Redis (see the module docstring).

    Args:
        settings: the limits, ``redis_url`` and the lease and failure settings.
        lifecycle: refuses everything once the server drains.
    """

    def __init__(self, settings: Settings, lifecycle: Lifecycle) -> None:
        self._settings = settings
        self._mode = settings.limits_on_redis_failure
        workers = settings.limits_workers
        # The per-process part: the drain gate, the buffered pool and, while ``local`` is
        # engaged, this process' share of the stream limits and (``_local_rate``, and
        # ``_local_key_rate`` per key) of the rates; while Redis answers, rates and
        # stream limits are cluster cells and leases.
        local = dataclasses.replace(
            settings, max_streams=_share(settings.max_streams, workers),
            max_streams_per_agent=_share(settings.max_streams_per_agent, workers),
            rate_limit=settings.rate_limit / workers)
        self._local = Admission(dataclasses.replace(local, rate_limit=0.0), lifecycle)
        self._local_rate = Admission(local, lifecycle)
        self._local_key_rate = KeyLimits(settings.key_rate_limit / workers, 0)
        self._local_key_max = _share(settings.key_max_streams, workers)
        self._local_keys: dict[str, int] = {}
        self._leases = SlotLeases(settings.log.redis_url, ttl=settings.slot_lease_ttl,
                                  timeout=settings.limits_redis_timeout,
                                  pool_timeout=max(1.0, settings.admission_timeout),
                                  on_error=self._engage)
        self._held: dict[str, dict[str, list[str]]] = {}  # slot → scope → members
        self._weights = settings.weights()
        self._stop = asyncio.Event()
        self._heartbeat: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.degraded = False
        self._enforce(degraded=False)

    async def start(self) -> None:
        """Check that Redis answers, then start the heartbeat.

        Raises:
            ConfigError: Redis is unreachable at start (one line naming the setting).
        """
        await _ping_or_fail(self._leases)
        self._loop = asyncio.get_running_loop()
        self._heartbeat = self._loop.create_task(self._beat())

    async def aclose(self) -> None:
        """Stop the heartbeat, finish the pending releases and close the client."""
        self._stop.set()
        if self._heartbeat is not None:
            await self._heartbeat
        if self._held:  # streams the drain did not end release their slots now
            for slot in list(self._held):
                self._spawn_release(slot)
        await self._leases.drain(within=2 * self._settings.limits_redis_timeout)
        await self._leases.aclose()

    async def admit(self, agent: str, *, buffered: bool = False, key: str = "") -> Release:
        """Admit one request; return the function that ends it (call it exactly once).

        Raises:
            ShuttingDown: the server is draining (503).
            RateLimited: over the request rate (429 with Retry-After).
            Overloaded: a cluster scope is full, or Redis is down under ``closed`` (503).
        """
        await self._local.gate()
        scopes, rates = self._scopes(agent, buffered, key), self._rates(key)
        local = await self._local.take(agent, buffered=True) if buffered else _noop
        if not scopes and not rates:
            return local
        try:
            if not self.degraded:
                try:
                    weight = 1 if buffered else self._weights.get(agent, 1)
                    return both_releases(await self._lease(scopes, weight, rates), local)
                except _UNREACHABLE as exc:
                    self._engage(exc)
            if self._mode == "local":
                await self._local_rate.gate()
                self._local_key_rate.acquire(Principal("", key))
                if not buffered:
                    local = await self._local.take(agent)
            return both_releases(self._degraded_admit(key), local)
        except BaseException:
            local()
            raise

    async def view(self, agents: list[str]) -> dict[str, object]:
        """What ``GET /v1/limits`` shows: live cluster-wide counts from Redis.

        Args:
            agents: the registered agents (their ``agent:<name>`` scopes are shown
                when a per-agent limit is set).

        Returns:
            ``{"backend", "mode", "degraded", "held_here", "scopes"}``; ``scopes`` maps
            each scope to ``{"limit", "in_use"}`` (slots, weights counted), or is
            None when Redis does not answer.
        """
        s = self._settings
        wanted = [("global", s.max_streams)]
        if s.max_streams_per_agent:
            wanted += [(f"agent:{name}", s.max_streams_per_agent) for name in agents]
        scopes: dict[str, dict[str, int]] | None = {}
        try:
            for name, limit in wanted:
                assert scopes is not None
                scopes[name] = {"limit": limit, "in_use": await self._leases.count(name)}
        except _UNREACHABLE:
            scopes = None
        return {"backend": "redis", "mode": self._mode, "degraded": self.degraded,
                "held_here": sum(len(m) for held in self._held.values()
                                 for m in held.values()), "scopes": scopes}

    def _scopes(self, agent: str, buffered: bool, key: str) -> list[tuple[str, int]]:
        s = self._settings
        scopes = []
        if not buffered:
            if s.max_streams > 0:
                scopes.append(("global", s.max_streams))
            if s.max_streams_per_agent > 0:
                scopes.append((f"agent:{agent}", s.max_streams_per_agent))
        if key and s.key_max_streams > 0:
            scopes.append((f"key:{key}", s.key_max_streams))
        return scopes

    def _rates(self, key: str) -> list[tuple[str, float, int]]:
        """The cluster rate cells of a request: (name, interval in ms, burst)."""
        s, rates = self._settings, []
        if s.rate_limit > 0:
            rates.append(("rate:global", 1000 / s.rate_limit,
                          s.rate_burst or max(1, math.ceil(s.rate_limit))))
        if key and s.key_rate_limit > 0:
            rates.append((f"rate:key:{key}", 1000 / s.key_rate_limit,
                          max(1, math.ceil(s.key_rate_limit))))
        return rates

    async def _lease(self, scopes: list[tuple[str, int]], weight: int,
                     rates: list[tuple[str, float, int]]) -> Release:
        slot = self._leases.new_slot()
        # Shielded: a request cancelled while the script runs must not strand a slot
        # that Redis granted (LiteLLM #28160); the callback then gives it back.
        call = self._leases.admit(slot, scopes, weight, rates)
        held = {name: members(slot, weight) for name, _ in scopes}
        try:
            verdict, which, wait_ms = await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(lambda done: self._abandon(done, held))
            raise
        if verdict == 2:
            name = rates[which - 1][0]
            metrics.shed(name.split(":")[1], "rate")
            per = "for this API key " if name.startswith("rate:key:") else ""
            limit = self._settings.key_rate_limit if per else self._settings.rate_limit
            raise RateLimited(f"the cluster rate limit of {limit:g} requests/s {per}is "
                              "exceeded", retry_after=wait_ms / 1000)
        if verdict == 1:
            scope = scopes[which - 1]
            metrics.shed(scope[0].split(":")[0], "concurrency")
            raise Overloaded(f"the cluster limit of {scope[1]} concurrent streams of scope "
                             f"{scope[0].split(':')[0]} is reached", retry_after=1)
        self._held[slot] = held
        for name in held:
            metrics.LIMIT_SLOTS.labels(name.split(":")[0]).inc(weight)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._on_loop(slot)

        return release

    def _abandon(self, done: asyncio.Future[Verdict], held: dict[str, list[str]]) -> None:
        """The request left while Redis admitted it: give the slot straight back."""
        if not done.cancelled() and done.exception() is None and done.result()[0] == 0:
            self._leases.release(held)

    def _on_loop(self, slot: str) -> None:
        """Release ``slot`` from whichever thread the stream ends on."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running is self._loop:
            self._spawn_release(slot)
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._spawn_release, slot)

    def _spawn_release(self, slot: str) -> None:
        held = self._held.pop(slot, None)
        if held is None:
            return
        for name, names in held.items():
            metrics.LIMIT_SLOTS.labels(name.split(":")[0]).dec(len(names))
        self._leases.release(held)  # coalesced; if Redis misses it, the lease expires

    def _degraded_admit(self, key: str) -> Release:
        if self._mode == "closed":
            metrics.shed("global", "unavailable")
            raise Overloaded("the cluster limits cannot reach Redis "
                             "(STREAMBRIDGE_LIMITS_ON_REDIS_FAILURE=closed)",
                             retry_after=1, code="limits_unavailable")
        if self._mode == "open" or not key or self._local_key_max == 0:
            return _noop
        if self._local_keys.get(key, 0) >= self._local_key_max:
            metrics.shed("key", "concurrency")
            raise Overloaded(f"this API key already has {self._local_key_max} requests in "
                             "progress in this process", retry_after=1)
        self._local_keys[key] = self._local_keys.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._local_keys[key] -= 1

        return release

    def _engage(self, exc: BaseException) -> None:
        if self.degraded:
            return
        self.degraded = True
        metrics.LIMITS_DEGRADED.labels(self._mode).set(1)
        self._enforce(degraded=True)
        log.warning("cluster limits degraded: Redis at STREAMBRIDGE_REDIS_URL unreachable "
                    "(%s: %s); STREAMBRIDGE_LIMITS_ON_REDIS_FAILURE=%s until it answers",
                    type(exc).__name__, exc, self._mode)

    def _recover(self) -> None:
        if self.degraded:
            self.degraded = False
            metrics.LIMITS_DEGRADED.labels(self._mode).set(0)
            self._enforce(degraded=False)
            log.warning("cluster limits recovered: Redis answers again; slot leases enforced")

    def _enforce(self, *, degraded: bool) -> None:
        s, workers = self._settings, self._settings.limits_workers
        for scope, limit in (("global", s.max_streams), ("agent", s.max_streams_per_agent),
                             ("key", s.key_max_streams)):
            value = float(limit or math.inf)
            if degraded:
                value = {"open": math.inf, "closed": 0.0,
                         "local": float(_share(limit, workers) or math.inf)}[self._mode]
            metrics.LIMIT_ENFORCED.labels(scope).set(value)

    async def _beat(self) -> None:
        """Renew every held lease each ``slot_lease_renew`` s; probe Redis while degraded."""
        every = self._settings.slot_lease_renew
        while not self._stop.is_set():
            try:
                async with asyncio.timeout(every):
                    await self._stop.wait()
                return
            except TimeoutError:
                pass
            held: dict[str, list[str]] = {}
            for scopes in self._held.values():
                for name, names in scopes.items():
                    held.setdefault(name, []).extend(names)
            try:
                lost = await self._leases.renew(held) if held else 0
                if not held and self.degraded:
                    await self._leases.ping()
            except _UNREACHABLE as exc:
                if held:
                    metrics.LEASE_RENEWALS_FAILED.inc()
                self._engage(exc)
                continue
            if lost:
                log.info("re-created %d slot leases that Redis had lost", lost)
            self._recover()


async def _ping_or_fail(leases: SlotLeases) -> None:
    try:
        await leases.ping()
    except _UNREACHABLE as exc:
        await leases.aclose()
        raise ConfigError(f"STREAMBRIDGE_REDIS_URL is unreachable for the cluster limits "
                          f"({type(exc).__name__}: {exc})") from None


def _share(limit: int, workers: int) -> int:
    """One process' share of a cluster limit (at least 1; 0 stays unlimited)."""
    return max(1, math.ceil(limit / workers)) if limit > 0 else 0


def _noop() -> None:
    pass

