"""The ``memory`` backend: the embedded default, one process, no I/O.

Each stream is a bounded ``StreamBuffer`` (oldest entries dropped, older cursors
reset), kept for ``log_retention`` seconds after its terminal entry and then gone.
Leases, fencing, cancel intents and the sweeper behave as in the Redis backend, so
the engine can use one code path; here "another process" cannot exist, so a lease
only expires when its owner stopped renewing (a stuck or leaked run).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._buffer import StreamBuffer
from ._ids import EventId, new_epoch
from ._settings import LogSettings
from ._types import (
    TERMINAL_EVENTS,
    CancelResult,
    Entry,
    Lease,
    ReadItem,
    Status,
    StreamMeta,
)
from .exceptions import StaleOwner, StreamClosed, StreamExists, StreamNotFound

INTERRUPTED = {"code": "interrupted", "message": "the stream's owner stopped (lease expired)",
               "retryable": True}


@dataclass(eq=False)
class _Stream:
    tenant: str
    conversation_id: str
    buffer: StreamBuffer
    lease: Lease | None
    lease_expires: float
    status: Status = "running"
    cancel: bool = False
    expires: float = float("inf")  # monotonic deadline after the terminal entry
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


class MemoryLog:
    """The in-process stream log (see the module docstring).

    Args:
        settings: maxlen, retention and lease timings.
        owner: this process' id (any string).
    """

    def __init__(self, settings: LogSettings | None = None, *, owner: str = "local") -> None:
        self.settings = settings or LogSettings()
        self.owner = owner
        self.on_swept: Callable[[list[str]], None] | None = None
        self._streams: dict[str, _Stream] = {}
        self._tokens = itertools.count(1)

    def _get(self, stream_id: str) -> _Stream | None:
        st = self._streams.get(stream_id)
        if st is not None and st.expires <= time.monotonic():
            del self._streams[stream_id]
            return None
        return st

    async def create(self, stream_id: str, *, tenant: str, conversation_id: str) -> Lease:
        """Create a running stream owned by this process; see ``StreamLog.create``."""
        if self._get(stream_id) is not None:
            raise StreamExists(f"stream {stream_id!r} already exists")
        lease = Lease(stream_id, self.owner, next(self._tokens))
        self._streams[stream_id] = _Stream(
            tenant, conversation_id, StreamBuffer(new_epoch(), self.settings.log_maxlen),
            lease, time.monotonic() + self.settings.lease_ttl)
        return lease

    def _owned(self, lease: Lease) -> _Stream:
        st = self._get(lease.stream_id)
        if st is None or st.lease is not lease or st.lease_expires <= time.monotonic():
            lease.lost = True
            raise StaleOwner(f"lease {lease.fence} on {lease.stream_id!r} is not current")
        if st.status != "running":
            raise StreamClosed(f"stream {lease.stream_id!r} has ended")
        return st

    def _add(self, st: _Stream, event: str, data: Mapping[str, Any]) -> EventId:
        eid = EventId.made(st.buffer.epoch, next(st.seq), 0)
        st.buffer.add(Entry(eid, event, dict(data)))
        if event in TERMINAL_EVENTS:
            st.status = "done" if event == "done" else "error"
            st.lease = None
            st.expires = time.monotonic() + self.settings.log_retention
        return eid

    def append(self, lease: Lease, event: str, data: Mapping[str, Any]) -> EventId:
        """Append a non-terminal event; see ``StreamLog.append``."""
        if event in TERMINAL_EVENTS:
            raise ValueError("use finish() for the terminal entry")
        return self._add(self._owned(lease), event, data)

    async def finish(self, lease: Lease, event: str, data: Mapping[str, Any]) -> EventId:
        """Append the terminal entry; see ``StreamLog.finish``."""
        if event not in TERMINAL_EVENTS:
            raise ValueError(f"terminal event must be one of {sorted(TERMINAL_EVENTS)}")
        return self._add(self._owned(lease), event, data)

    async def read(self, stream_id: str, cursor: EventId | None, *,
                   tenant: str | None = None) -> AsyncIterator[ReadItem]:
        """Replay then follow; see ``StreamLog.read`` (raises on the first iteration)."""
        st = self._get(stream_id)
        if st is None or (tenant is not None and tenant != st.tenant):
            raise StreamNotFound(f"no stream {stream_id!r}")
        async for item in st.buffer.read(cursor):
            yield item

    async def meta(self, stream_id: str) -> StreamMeta | None:
        """Return the stream's metadata; see ``StreamLog.meta``."""
        st = self._get(stream_id)
        if st is None:
            return None
        return StreamMeta(stream_id, st.tenant, st.conversation_id, st.status,
                          st.buffer.epoch, st.cancel)

    async def renew(self, lease: Lease) -> bool:
        """Extend the lease; see ``StreamLog.renew``."""
        try:
            st = self._owned(lease)
        except (StaleOwner, StreamClosed):
            lease.lost = True
            return False
        st.lease_expires = time.monotonic() + self.settings.lease_ttl
        return True

    async def request_cancel(self, stream_id: str) -> CancelResult:
        """Record a cancel intent and wake the owner; see ``StreamLog.request_cancel``."""
        st = self._get(stream_id)
        if st is None:
            raise StreamNotFound(f"no stream {stream_id!r}")
        if st.status != "running" or st.cancel:
            return CancelResult(st.status, False)
        st.cancel = True
        if st.lease is not None:
            st.lease.cancelled.set()
        return CancelResult(st.status, True)

    async def sweep(self) -> list[str]:
        """End running streams whose lease expired; see ``StreamLog.sweep``."""
        now = time.monotonic()
        ended = []
        for sid in list(self._streams):
            st = self._get(sid)
            if st is not None and st.status == "running" and st.lease_expires <= now:
                if st.lease is not None:
                    st.lease.lost = True
                self._add(st, "error", INTERRUPTED)
                ended.append(sid)
        if ended and self.on_swept is not None:
            self.on_swept(ended)
        return ended

    async def aclose(self) -> None:
        """Forget every stream."""
        self._streams.clear()
