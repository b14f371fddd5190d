"""The producer's batches: what each owned stream has not stored yet, and one flush.

``RedisLog`` (``_redis.py``) owns the streams, the writer task and the round trip; this
module keeps each owned stream's pending entries (``Owned``), takes the next batch
(``take``: the ``redis_max_buffered`` cap is applied here, when nothing of the stream is
in flight) and packs a batch into a pipeline (``fill``: one ``APPEND_MANY`` a flush on
a single Redis, one ``APPEND`` a stream on a Cluster).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from . import _scripts as S
from ._buffer import StreamBuffer
from ._settings import LogSettings
from ._types import Lease

Sent = list[tuple[str, str, str]]  # (native id, event, JSON data)


class Owned:
    """A stream this process owns: its local buffer and what is not yet in Redis."""

    def __init__(self, lease: Lease, tenant: str, conv: str, epoch: str, maxlen: int) -> None:
        self.lease, self.tenant, self.conv = lease, tenant, conv
        self.buffer = StreamBuffer(epoch, maxlen)
        self.seq = 0
        self.pending: list[tuple[str, str, str]] = []  # (id, event, json data)
        self.terminal = ""  # status once the terminal entry is appended
        self.done: asyncio.Future[None] | None = None
        self.force_epoch = False  # entries were dropped from the retry: readers must reset


Batch = list[tuple[Owned, Sent]]


def take(dirty: dict[str, Owned], most: int) -> Batch:
    """The next batch: every dirty stream's pending entries (none of them in flight).

    Past ``most`` (``redis_max_buffered``) entries, Redis being down or slow, the oldest
    are dropped here, while nothing of the stream is in flight, and the batch starts the
    log anew under a new epoch: its readers reset instead of seeing a gap.
    """
    for st in dirty.values():
        if len(st.pending) > most:
            del st.pending[:len(st.pending) - most]
            st.force_epoch = True
    batch = [(st, list(st.pending)) for st in dirty.values() if st.pending]
    dirty.clear()
    return batch


def fill(pipe: Any, batch: Batch, s: LogSettings, sha: dict[str, str], *, one_call: bool,
         epoch: str) -> None:
    """Add a batch's commands to ``pipe``: the appends, then ``ZREM`` of ended streams.

    Args:
        pipe: a redis-py pipeline (no transaction).
        batch: what ``take`` returned.
        s: the log settings.
        sha: the loaded scripts' SHA1s by name.
        one_call: one ``APPEND_MANY`` for the whole batch (a single Redis), else one
            ``APPEND`` a stream (a Cluster: a script may not span slots).
        epoch: the epoch for any stream whose log must be recreated in this flush.
    """
    groups: list[list[Any]] = []
    ends = []
    for st, sent in batch:
        ends.append(st.terminal if st.pending[-1:] == sent[-1:] else "")
        if one_call:
            groups.append([st.lease.stream_id, st.lease.fence, st.tenant, st.conv,
                           ends[-1], "1" if st.force_epoch else "0", sent])
        else:
            pipe.evalsha(sha["APPEND"], 4, *S.keys(st.lease.stream_id),
                         *S.append_args(s, fence=st.lease.fence, epoch=epoch, tenant=st.tenant,
                                        conv=st.conv, terminal=ends[-1],
                                        force_epoch=st.force_epoch, entries=sent))
    if one_call:
        pipe.evalsha(sha["APPEND_MANY"], 0, s.log_maxlen, int(s.log_retention * 1000),
                     int(s.lease_ttl * 1000), epoch, json.dumps(groups, separators=(",", ":")))
    for (st, _), end in zip(batch, ends, strict=True):
        if end:
            pipe.zrem(S.RUNNING, st.lease.stream_id)
