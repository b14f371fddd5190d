"""Whether this process can reach Redis: one metric, one log line each way.

One outage is one degraded line, one count and one recovered line, however many round
trips and connections fail in it. A round trip begun before the last recovery failed in
the outage already logged; and a connection made before an outage may be dead from it
(a restarted Redis closed it) yet fail only when next used, after another connection
saw the recovery: ``on_outage`` lets the backend retire every such connection when the
outage begins, so that no failure of it is taken for a new outage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge

log = logging.getLogger("streambridge.streamlog")
REDIS_DEGRADED = Gauge("streambridge_log_redis_degraded",
                       "1 while the stream log cannot reach Redis.", multiprocess_mode="max")
REDIS_OUTAGES = Counter("streambridge_log_redis_outages_total",
                        "Times the stream log lost Redis.")


class Health:
    """The degraded/recovered state of one backend instance.

    Args:
        on_outage: called when an outage begins (the first failure after a recovery).
    """

    def __init__(self, on_outage: Callable[[], None] | None = None) -> None:
        self.degraded = False
        self.recovered_at = 0.0  # perf_counter() of the last recovery
        self.outages = 0  # outages of this instance (the counter is the process')
        self.on_outage = on_outage

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
            self.outages += 1
            REDIS_DEGRADED.set(1)
            REDIS_OUTAGES.inc()
            if self.on_outage is not None:
                self.on_outage()
            log.warning("stream log degraded: Redis at STREAMBRIDGE_REDIS_URL unreachable "
                        "(%s); buffering appends, local readers continue", exc)

    def recover(self) -> None:
        """Record a successful round trip (logs only the first after an outage)."""
        if self.degraded:
            self.degraded = False
            self.recovered_at = time.perf_counter()
            REDIS_DEGRADED.set(0)
            log.info("stream log recovered: Redis reachable again")
