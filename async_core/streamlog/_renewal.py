"""The heartbeat's round trips: leases renewed in one pipeline, expired ones swept.

``renew_leases``: one pipeline of ``RENEW`` calls and one ``ZADD`` (not two round trips
a stream: at 100 streams that was 200 round trips, and as many wake-ups, every
``lease_renew`` seconds).
``sweep_expired``: the sweeper's pass. Kept apart from ``_redis.py`` (which applies
the replies) to keep that module small.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import NoScriptError

from . import _scripts as S
from ._memory import INTERRUPTED
from ._settings import LogSettings
from ._types import Lease


async def renew_leases(client: Any, sha: dict[str, str], leases: list[Lease], ttl_ms: int,
                       reload: Callable[[], Awaitable[None]]) -> list[Any]:
    """Renew ``leases`` in one round trip; return ``RENEW``'s replies (then ``ZADD``'s).

    Args:
        client: the ``redis.asyncio.Redis`` command client.
        sha: the loaded scripts' SHA1s by name.
        leases: the leases to renew.
        ttl_ms: the new lease TTL.
        reload: loads the scripts again (after a Redis restart emptied its cache).
    """
    out: list[Any] = []
    for attempt in (0, 1):
        pipe = client.pipeline(transaction=False)
        for lease in leases:
            pipe.evalsha(sha["RENEW"], 2, *S.keys(lease.stream_id)[2:0:-1], lease.fence,
                         ttl_ms)
        deadline = time.time() * 1000 + ttl_ms
        pipe.zadd(S.RUNNING, {lease.stream_id: deadline for lease in leases})
        out = await pipe.execute(raise_on_error=False)
        if attempt == 0 and any(isinstance(r, NoScriptError) for r in out):
            await reload()
            continue
        break
    return out


async def sweep_expired(client: Any, eval_script: Callable[..., Awaitable[Any]],
                        settings: LogSettings) -> list[str]:
    """End the running streams whose lease expired; return the ids this call ended.

    Args:
        client: the ``redis.asyncio.Redis`` command client.
        eval_script: ``RedisLog.eval_script``.
        settings: the log settings (maxlen, retention).
    """
    due = await client.zrangebyscore(S.RUNNING, "-inf", time.time() * 1000)
    ended, gone = [], []
    data = json.dumps(INTERRUPTED)
    for raw in due:
        sid = raw.decode()
        res = await eval_script("SWEEP", S.keys(sid), data, settings.log_maxlen,
                                int(settings.log_retention * 1000))
        if res == 1:
            ended.append(sid)
        if res != 2:
            gone.append(sid)
    if gone:
        await client.zrem(S.RUNNING, *gone)
    return ended
