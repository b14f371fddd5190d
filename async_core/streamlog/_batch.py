"""The producer's batches: what each owned stream has not stored yet, and one flush.

``RedisLog`` (``_redis.py``) owns the streams, the writer task and the round trip; this
module keeps each owned stream's pending entries (``Owned``), takes the next batch
(``take``: the ``redis_max_buffered`` cap is applied here, when nothing of the stream is
in flight), packs a batch into commands (``fill``: one ``APPEND_MANY`` a flush on a
single Redis, one ``APPEND`` a stream on a Cluster) and drops what Redis acknowledged
(``acked``). Several batches of a stream may be in flight: ``Owned.sent`` counts the
pending entries already written (the oldest ones).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from . import _scripts as S
from ._buffer import StreamBuffer
from ._ids import parse_native
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
        self.sent = 0  # how many of ``pending`` (the oldest) are in flight
        self.terminal = ""  # status once the terminal entry is appended
        self.done: asyncio.Future[None] | None = None
        self.force_epoch = False  # entries were dropped from the retry: readers must reset


Batch = list[tuple[Owned, Sent, bool]]  # (stream, its entries, whether they start anew)


def take(dirty: dict[str, Owned], most: int) -> Batch:
    """The next batch: every dirty stream's pending entries not yet in flight.

    Past ``most`` (``redis_max_buffered``) entries, Redis being down or slow, the oldest
    are dropped here, while nothing of the stream is in flight, and the batch starts the
    log anew under a new epoch: its readers reset instead of seeing a gap.
    """
    batch: Batch = []
    for st in dirty.values():
        if st.sent == 0 and len(st.pending) > most:
            del st.pending[:len(st.pending) - most]
            st.force_epoch = True
        if len(st.pending) > st.sent:
            batch.append((st, st.pending[st.sent:], st.force_epoch))
            st.sent, st.force_epoch = len(st.pending), False
    dirty.clear()
    return batch


def acked(st: Owned, sent: Sent) -> None:
    """Drop from ``st.pending`` every entry up to the last of ``sent`` (Redis has them)."""
    last = parse_native(sent[-1][0])
    n = 0
    while n < len(st.pending) and parse_native(st.pending[n][0]) <= last:
        n += 1
    del st.pending[:n]
    st.sent = max(0, st.sent - n)


def failed(st: Owned, force: bool) -> None:
    """A batch of ``st`` was not stored: everything pending is sent again, in order."""
    st.sent = 0
    st.force_epoch = st.force_epoch or force


def fill(batch: Batch, s: LogSettings, sha: dict[str, str], *, one_call: bool,
         epoch: str) -> list[tuple[Any, ...]]:
    """A batch's commands: the appends, then ``ZREM`` of ended streams.

    Args:
        batch: what ``take`` returned.
        s: the log settings.
        sha: the loaded scripts' SHA1s by name.
        one_call: one ``APPEND_MANY`` for the whole batch (a single Redis), else one
            ``APPEND`` a stream (a Cluster: a script may not span slots).
        epoch: the epoch for any stream whose log must be recreated in this flush.
    """
    cmds: list[tuple[Any, ...]] = []
    groups: list[list[Any]] = []
    ends = []
    for st, sent, force in batch:
        ends.append(st.terminal if st.pending[-1:] == sent[-1:] else "")
        if one_call:
            groups.append([st.lease.stream_id, st.lease.fence, st.tenant, st.conv,
                           ends[-1], "1" if force else "0", sent, st.pending[0][0]])
        else:
            cmds.append(("EVALSHA", sha["APPEND"], 4, *S.keys(st.lease.stream_id),
                         *S.append_args(s, fence=st.lease.fence, epoch=epoch, tenant=st.tenant,
                                        conv=st.conv, terminal=ends[-1],
                                        force_epoch=force, entries=sent,
                                        oldest=st.pending[0][0])))
    if one_call:
        cmds.append(("EVALSHA", sha["APPEND_MANY"], 0, s.log_maxlen,
                     int(s.log_retention * 1000), int(s.lease_ttl * 1000), epoch,
                     json.dumps(groups, separators=(",", ":"))))
    for (st, _, _), end in zip(batch, ends, strict=True):
        if end:
            cmds.append(("ZREM", S.RUNNING, st.lease.stream_id))
    return cmds
