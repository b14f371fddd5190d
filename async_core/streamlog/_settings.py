"""Settings of the stream log: ``async_core.Settings.log``.

``async_core.Settings.from_env`` reads them, from ``STREAMBRIDGE_*`` variables named
after the fields (the one settings loader): ``Settings.from_env().log``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ENV_PREFIX = "STREAMBRIDGE_"  # the names in messages; the loader reads them


@dataclass(frozen=True, kw_only=True, slots=True)
class LogSettings:
    """How the stream log runs.

    Attributes:
        redis_url: ``redis://host:port/db`` of the Redis backend; empty: the memory
            backend (one process).
        log_maxlen: entries kept per stream (``XADD MAXLEN ~``; exact in memory);
            a cursor older than what is kept gets a reset.
        log_retention: seconds a stream stays readable after its terminal entry.
        lease_ttl: seconds an owner's lease lives without a renewal.
        lease_renew: seconds between the owner's renewals (well below ``lease_ttl``).
        sweep_interval: seconds between two sweeps for expired leases; readers of a
            crashed stream get its terminal entry within ``lease_ttl + sweep_interval``.
        redis_block: seconds one ``XREAD BLOCK`` of the process' reader waits.
        redis_socket_timeout: socket timeout of every Redis connection; must exceed
            ``redis_block`` (redis-py's default breaks long blocking reads).
        redis_max_buffered: entries one stream may buffer while Redis is unreachable;
            beyond that the oldest are dropped from the retry (Redis readers then reset).
        redis_retry: seconds between reconnection attempts while Redis is unreachable.
        redis_pool: command connections per process (a full pool waits, never raises);
            the blocking reader has one more of its own, and so has the writer (its
            batches in flight) once this process produces a stream.
    """

    redis_url: str = dataclasses.field(default="", repr=False)  # may hold a password
    log_maxlen: int = 5000
    log_retention: float = 600.0
    lease_ttl: float = 10.0
    lease_renew: float = 3.0
    sweep_interval: float = 5.0
    redis_block: float = 5.0
    redis_socket_timeout: float = 15.0
    redis_max_buffered: int = 10_000
    redis_retry: float = 0.25
    redis_pool: int = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "redis_url" and value <= 0:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()} must be > 0, got {value!r}")
        if self.redis_socket_timeout <= self.redis_block:
            raise ValueError(f"{ENV_PREFIX}REDIS_SOCKET_TIMEOUT must exceed "
                             f"{ENV_PREFIX}REDIS_BLOCK (a blocking read would time out)")
        if self.lease_renew >= self.lease_ttl:
            raise ValueError(f"{ENV_PREFIX}LEASE_RENEW must be below {ENV_PREFIX}LEASE_TTL")
