"""What every stream service of one process shares, whichever path it labels.

One process has one drain, one admission (slots and rates: asyncio primitives, so on
one loop), one set of finish hooks, one API key table with its limits, one registry
of background runs, one stream log and one store. ``StreamService`` builds these once
(``build_parts``); a second service of the same process (the hybrid front's Flask
branch) is given the first one's (``StreamService(shares=...)``) instead of a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _metrics as metrics
from ._admission import Admission
from ._lifecycle import Lifecycle
from ._records import FinishHook
from ._runs import Runs
from ._settings import Settings
from .auth import ApiKeys, KeyLimits
from .streamlog import MemoryLog, StreamLog

if TYPE_CHECKING:
    from ._cluster_admission import ClusterAdmission
    from .store import Persistence


@dataclass(slots=True)
class ServiceParts:
    """The parts; ``log`` and ``persistence`` are replaced by the owner's ``start``."""

    lifecycle: Lifecycle
    admission: Admission | ClusterAdmission
    hooks: list[FinishHook]
    api_keys: ApiKeys
    key_limits: KeyLimits
    runs: Runs
    log: StreamLog
    persistence: Persistence | None = None


def build_parts(settings: Settings, path: str, lifecycle: Lifecycle | None,
                hooks: Sequence[FinishHook]) -> ServiceParts:
    """The parts of a process' first service (``path`` labels its background-runs gauge)."""
    lifecycle = lifecycle or Lifecycle(settings.drain_grace)
    # With Redis a key's rate and concurrency are the cluster admission's.
    cluster = bool(settings.log.redis_url)
    return ServiceParts(
        lifecycle=lifecycle, admission=_admission(settings, lifecycle),
        hooks=[metrics.observe, *hooks], api_keys=ApiKeys.from_settings(settings),
        key_limits=KeyLimits(0 if cluster else settings.key_rate_limit,
                             0 if cluster else settings.key_max_streams),
        runs=Runs(path, settings.max_background, settings.log.lease_renew),
        log=MemoryLog(settings.log))  # memory until start() opens the configured log


def _admission(settings: Settings, lifecycle: Lifecycle) -> Admission | ClusterAdmission:
    """The admission the settings name: leases in Redis with ``redis_url``, else per process.

    The Redis one is imported only then: the embedded default loads no Redis client.
    """
    if settings.log.redis_url:
        from ._cluster_admission import ClusterAdmission

        return ClusterAdmission(settings, lifecycle)
    return Admission(settings, lifecycle)
