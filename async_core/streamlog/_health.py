"""Whether this process can reach Redis: one metric, one log line each way."""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter, Gauge

log = logging.getLogger("streambridge.streamlog")
REDIS_DEGRADED = Gauge("streambridge_log_redis_degraded",
                       "1 while the stream log cannot reach Redis.", multiprocess_mode="max")
REDIS_OUTAGES = Counter("streambridge_log_redis_outages_total",
                        "Times the stream log lost Redis.")


class Health:
    """The degraded/recovered state of one backend instance."""

    def __init__(self) -> None:
        self.degraded = False
        self.recovered_at = 0.0  # perf_counter() of the last recovery

    def degrade(self, exc: BaseException, started: float | None = None) -> None:
        """Record a failed round trip (logs and counts only the first of an outage).

        Args:
            exc: what the round trip raised.
            started: its ``perf_counter()`` start; a round trip begun before the last
                recovery failed in the outage already logged, and is not a new one.
        """
        if started is not None and started < self.recovered_at:
            return
        if not self.degraded:
            self.degraded = True
            REDIS_DEGRADED.set(1)
            REDIS_OUTAGES.inc()
            log.warning("stream log degraded: Redis at STREAMBRIDGE_REDIS_URL unreachable "
                        "(%s); buffering appends, local readers continue", exc)

    def recover(self) -> None:
        """Record a successful round trip (logs only the first after an outage)."""
        if self.degraded:
            self.degraded = False
            self.recovered_at = time.perf_counter()
            REDIS_DEGRADED.set(0)
            log.info("stream log recovered: Redis reachable again")
