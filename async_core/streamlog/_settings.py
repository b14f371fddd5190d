"""Settings of the stream log, loaded in one place (``async_core/_settings.py`` style).

Not yet read by the server: the session that wires the log into the engine moves these
fields into ``async_core.Settings`` (and README's table). Until then
``LogSettings.from_env`` is the only code of this package that reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "STREAMBRIDGE_"


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
            the blocking reader has one more of its own.
    """

    redis_url: str = ""
    log_maxlen: int = 5000
    log_retention: float = 600.0
    lease_ttl: float = 10.0
    lease_renew: float = 3.0
    sweep_interval: float = 5.0
    redis_block: float = 5.0
    redis_socket_timeout: float = 15.0
    redis_max_buffered: int = 10_000
    redis_retry: float = 0.25
    redis_pool: int = 4

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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 **overrides: Any) -> LogSettings:
        """Build settings from ``STREAMBRIDGE_*`` variables, then apply ``overrides``.

        Raises:
            ValueError: a variable does not parse, naming the variable.
        """
        env = os.environ if environ is None else environ
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = ENV_PREFIX + f.name.upper()
            raw = env.get(key, "").strip()
            if not raw:
                continue
            kind = f.type if isinstance(f.type, str) else f.type.__name__
            try:
                kw[f.name] = int(raw) if kind == "int" else float(raw) if kind == "float" else raw
            except ValueError:
                raise ValueError(f"{key}={raw!r} is not a valid {kind}") from None
        return cls(**{**kw, **overrides})
