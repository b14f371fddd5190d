"""Slot leases in Redis: concurrency limits that hold across every worker and host.

One sorted set per scope (``global``, ``agent:<name>``, ``key:<key id>``) holds the
slot ids in use, each scored by its lease expiry in Redis' own clock (``TIME``: hosts'
clocks never disagree about an expiry). Every key shares the hash tag ``{limits}``,
so one script may touch every scope of a request atomically (and Redis Cluster puts
them in one slot). Three steps:

- ``admit`` (one script): prune the expired slots of every scope, refuse if any scope
  would exceed its limit, else add the slot to all of them (all or none: a refused
  request never holds a slot, LiteLLM #32441).
- ``release``: ``ZREM`` the slot from its scopes (idempotent: a second release of the
  same id removes nothing).

Admissions and releases are coalesced: whatever the process' requests submit while a
round trip is in flight goes in the next one (releases first, then every admission in
one script call, judged in order), so 100 concurrent starts cost a few round trips,
not 100 (redis-py's client costs far more CPU per call than Redis does).
- ``renew`` (one script): push the expiry of every slot a process holds; a slot lost
  with a Redis restart is added back, so the counts come back with the next renewal.

A process that dies stops renewing: its slots expire after at most ``lease_ttl``
(shenyu#6646 is a concurrency set without expiry). Cost per call is independent of the
limit: ``ZREMRANGEBYSCORE`` touches only expired members, ``ZCARD`` is O(1).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

PREFIX = "sb:{limits}:"

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS scope sets and rate cells; ARGV ttl_ms requests, where requests is one JSON
# array of [slot, weight, [[key index, limit], ...], [[key index, interval_ms, burst],
# ...]] → for each request {0} admitted, {1, i} its i-th slot scope is full, or {2, j,
# wait_ms} its j-th rate is exceeded. Requests are judged in order, each all or none: a
# refused request takes no slot and spends no rate.
#
# Rates are GCRA (one number per cell, the theoretical arrival time ``tat``; O(1) per
# call whatever the limit, unlike a moving window, limits#268): a request fits when
# max(tat, now) + interval - now <= interval * burst; the wait is the excess.
ADMIT = _NOW + """
local ttl = tonumber(ARGV[1])
local expiry = now + ttl
local pruned, out = {}, {}
for r, req in ipairs(cjson.decode(ARGV[2])) do
  local slot, weight, scopes, rates = req[1], req[2], req[3], req[4]
  local verdict, tats = {0}, {}
  for j, rate in ipairs(rates) do
    local tat = tonumber(redis.call('GET', KEYS[rate[1]]) or '0')
    if tat < now then tat = now end
    local new = tat + rate[2]
    local excess = new - now - rate[2] * rate[3]
    if excess > 0 then
      verdict = {2, j, math.ceil(excess)}
      break
    end
    tats[j] = new
  end
  if verdict[1] == 0 then
    for i, s in ipairs(scopes) do
      local key = KEYS[s[1]]
      if not pruned[key] then
        redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
        pruned[key] = true
      end
      if redis.call('ZCARD', key) + weight > s[2] then
        verdict = {1, i}
        break
      end
    end
  end
  if verdict[1] == 0 then
    for j, rate in ipairs(rates) do
      redis.call('SET', KEYS[rate[1]], tats[j], 'PX', math.ceil(tats[j] - now) + 1)
    end
    for _, s in ipairs(scopes) do
      for k = 1, weight do redis.call('ZADD', KEYS[s[1]], expiry, slot .. '#' .. k) end
      redis.call('PEXPIRE', KEYS[s[1]], ttl)
    end
  end
  out[r] = verdict
end
return out
"""

# KEYS scope sets; ARGV ttl_ms members_1 .. members_n (each a JSON array) → members that
# were missing (lost with a Redis restart) and are now held again.
RENEW = _NOW + """
local expiry = now + tonumber(ARGV[1])
local missing = 0
for i, key in ipairs(KEYS) do
  for _, m in ipairs(cjson.decode(ARGV[i + 1])) do
    missing = missing + redis.call('ZADD', key, expiry, m)
  end
  redis.call('PEXPIRE', key, ARGV[1])
end
return missing
"""


def scope_key(scope: str) -> str:
    """The Redis key of ``scope`` (``global``, ``agent:<name>``, ``key:<id>``)."""
    return PREFIX + scope


def members(slot: str, weight: int) -> list[str]:
    """The set members a slot of ``weight`` occupies in each of its scopes."""
    return [f"{slot}#{k}" for k in range(1, weight + 1)]


Verdict = tuple[int, int, int]  # (0 admitted | 1 full | 2 rate, which, wait_ms)
_Request = tuple[str, Sequence[tuple[str, int]], int, Sequence[tuple[str, float, int]],
                 "asyncio.Future[Verdict]"]


class SlotLeases:
    """The Redis side of the slot leases: one client, coalesced calls (module docstring).

    Args:
        url: ``redis://...`` (``STREAMBRIDGE_REDIS_URL``).
        ttl: seconds a lease lives without a renewal.
        timeout: socket timeout of every call (a slower Redis counts as unreachable).
        pool_timeout: longest wait for a free connection of the pool.
        on_error: called with the exception when a coalesced release fails (the
            leases then expire by themselves).
    """

    def __init__(self, url: str, *, ttl: float, timeout: float, pool_timeout: float,
                 on_error: Callable[[BaseException], None] = lambda exc: None) -> None:
        self.ttl_ms = max(1, int(ttl * 1000))
        self.owner = uuid.uuid4().hex[:12]
        # A blocking pool waits for a connection instead of raising at its size (PITFALLS).
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=8, timeout=pool_timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout, client_name=f"sb-limits-{self.owner}",
            protocol=2)
        self.client: Any = aioredis.Redis(connection_pool=pool)
        self._admit = self.client.register_script(ADMIT)
        self._renew = self.client.register_script(RENEW)
        self._on_error = on_error
        self._seq = 0
        self._admits: list[_Request] = []
        self._releases: dict[str, list[str]] = {}
        self._flusher: asyncio.Task[None] | None = None

    def new_slot(self) -> str:
        """A slot id unique in the cluster (this process' owner id and a counter)."""
        self._seq += 1
        return f"{self.owner}-{self._seq}"

    async def ping(self) -> None:
        """One round trip; raises the client's error when Redis does not answer."""
        await self.client.ping()

    def admit(self, slot: str, scopes: Sequence[tuple[str, int]], weight: int,
              rates: Sequence[tuple[str, float, int]] = ()) -> asyncio.Future[Verdict]:
        """Submit taking ``slot`` in every scope of ``scopes`` (name, limit) and one
        request of every rate of ``rates`` (name, interval in ms, burst), or nothing.

        Returns:
            A future of the verdict: ``(0, 0, 0)`` admitted, ``(1, i, 0)`` the i-th
            (1-based) scope is full, ``(2, j, wait_ms)`` the j-th rate is exceeded; it
            holds the client's exception when Redis did not answer.
        """
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._admits.append((slot, scopes, weight, rates, future))
        self._kick()
        return future

    def release(self, held: Mapping[str, Sequence[str]]) -> None:
        """Submit removing the members ``held`` (scope name → members); never waits."""
        if not any(held.values()):
            return
        for scope, names in held.items():
            self._releases.setdefault(scope, []).extend(names)
        self._kick()

    def _kick(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Send what was submitted, one batch at a time, until nothing is left."""
        try:
            while self._releases or self._admits:
                releases, self._releases = self._releases, {}
                if releases:
                    try:
                        pipe = self.client.pipeline(transaction=False)
                        for scope, names in releases.items():
                            pipe.zrem(scope_key(scope), *names)
                        await pipe.execute()
                    except Exception as exc:  # the leases expire by themselves
                        self._on_error(exc)
                batch, self._admits = self._admits[:_BATCH], self._admits[_BATCH:]
                if batch:
                    await self._admit_batch(batch)
        finally:
            self._flusher = None

    async def _admit_batch(self, batch: list[_Request]) -> None:
        keys: dict[str, int] = {}

        def index(name: str) -> int:
            return keys.setdefault(scope_key(name), len(keys) + 1)

        requests = [[slot, weight, [[index(name), limit] for name, limit in scopes],
                     [[index(name), interval, burst] for name, interval, burst in rates]]
                    for slot, scopes, weight, rates, _ in batch]
        try:
            results = await self._admit(keys=list(keys),
                                        args=[self.ttl_ms, json.dumps(requests)])
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (*_, future), verdict in zip(batch, results, strict=True):
            if not future.done():
                code, which, wait = (*(int(v) for v in verdict), 0, 0)[:3]
                future.set_result((code, which, wait))

    async def drain(self, within: float) -> None:
        """Wait (up to ``within`` s) until every submitted call was sent (shutdown)."""
        if self._flusher is not None:
            await asyncio.wait({self._flusher}, timeout=within)

    async def renew(self, held: Mapping[str, Sequence[str]]) -> int:
        """Push the expiry of every member ``held``; return how many had been lost."""
        if not held:
            return 0
        keys = [scope_key(scope) for scope in held]
        args: list[str | int] = [self.ttl_ms,
                                 *(json.dumps(list(names)) for names in held.values())]
        return int(await self._renew(keys=keys, args=args))

    async def count(self, scope: str) -> int:
        """Slots (members) of ``scope`` held now cluster-wide; expired ones do not count."""
        seconds, micros = await self.client.time()
        now = int(seconds) * 1000 + int(micros) // 1000
        return int(await self.client.zcount(scope_key(scope), f"({now}", "+inf"))

    async def aclose(self) -> None:
        """Close the client and its pool."""
        await self.client.aclose(close_connection_pool=True)


_BATCH = 500  # admissions per script call (one call's time stays well under a ms)
