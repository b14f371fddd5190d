"""What the stream log stores and answers, and the one interface both backends implement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ._ids import EventId

TERMINAL_EVENTS = frozenset({"done", "error"})

# The status of a stream, as its metadata records it:
#   running → done       its terminal entry was `done`
#           → error      its terminal entry was `error` (incl. the sweeper's `interrupted`)
Status = Literal["running", "done", "error"]
ResetReason = Literal["epoch", "trimmed"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One event of a stream, as the log keeps it.

    Attributes:
        id: its position (encode it with ``encode_id`` for the wire).
        event: the event name (``delta``, ``state``, ``done``, ``error``).
        data: the event's JSON object.
    """

    id: EventId
    event: str
    data: Mapping[str, Any]

    @property
    def terminal(self) -> bool:
        """Whether this is the stream's terminal entry."""
        return self.event in TERMINAL_EVENTS


@dataclass(frozen=True, slots=True)
class Reset:
    """The cursor cannot be served without a gap; the reader must reload the transcript.

    After a ``Reset`` the read goes on from the oldest entry the log still has.

    Attributes:
        reason: ``epoch`` (the log was recreated, or the cursor is of an older epoch)
            or ``trimmed`` (entries after the cursor were dropped).
    """

    reason: ResetReason


@dataclass(frozen=True, slots=True)
class StreamMeta:
    """What the log knows of a stream besides its entries.

    Attributes:
        stream_id: the stream.
        tenant: the owner tenant (reads by another tenant are 404).
        conversation_id: the conversation it belongs to.
        status: ``running``, ``done`` or ``error``.
        epoch: the log's current epoch.
        cancel_requested: whether a cancel intent was recorded.
    """

    stream_id: str
    tenant: str
    conversation_id: str
    status: Status
    epoch: str
    cancel_requested: bool = False


@dataclass(frozen=True, slots=True)
class CancelResult:
    """The answer to a cancel request.

    Attributes:
        status: the stream's status when the request was recorded.
        recorded: ``False`` when an intent was already there or the stream had ended.
    """

    status: Status
    recorded: bool


@dataclass(eq=False, slots=True)
class Lease:
    """The fenced right to append to one running stream.

    Attributes:
        stream_id: the stream.
        owner: the owning process' id.
        token: the fencing token; an append carries it and a stale one is refused.
        cancelled: set when a cancel intent reaches the owner (or the lease is lost).
        lost: set when a renewal found the lease gone: stop producing.
    """

    stream_id: str
    owner: str
    token: int
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    lost: bool = False

    @property
    def fence(self) -> str:
        """The value of the owner key: ``<owner>:<token>``."""
        return f"{self.owner}:{self.token}"


ReadItem = Entry | Reset


class StreamLog(Protocol):
    """A log of stream events: the run appends, subscriptions read from a cursor.

    Both backends (``memory``, ``redis``) implement exactly this. Appends are
    synchronous and never wait for the backend (they are coalesced and written by one
    writer task per process); the terminal entry is awaited.

    Attributes:
        on_swept: called (synchronously, never awaited) with the streams each sweep
            ended, e.g. to mark their stored transcripts ``interrupted`` in a database
            every host shares (``Persistence.swept``); ``None``: nobody listens.
    """

    on_swept: Callable[[list[str]], None] | None

    async def create(self, stream_id: str, *, tenant: str, conversation_id: str) -> Lease:
        """Create a running stream owned by this process and return its lease.

        Raises:
            StreamExists: the stream exists (a resume never starts a second generation).
        """
        ...

    def append(self, lease: Lease, event: str, data: Mapping[str, Any]) -> EventId:
        """Append a non-terminal event; never waits. Raises ``StaleOwner``, ``StreamClosed``."""
        ...

    async def finish(self, lease: Lease, event: str, data: Mapping[str, Any]) -> EventId:
        """Append the terminal entry (``done`` or ``error``) and wait until it is stored."""
        ...

    def read(self, stream_id: str, cursor: EventId | None, *,
             tenant: str | None = None) -> AsyncIterator[ReadItem]:
        """Replay the entries after ``cursor``, then follow live until the terminal entry.

        Raises:
            StreamNotFound: unknown, expired, or ``tenant`` is not the owner.
        """
        ...

    async def meta(self, stream_id: str) -> StreamMeta | None:
        """Return the stream's metadata, or ``None`` when unknown or expired."""
        ...

    async def renew(self, lease: Lease) -> bool:
        """Extend the lease; ``False`` (and ``lease.lost``) when it was lost."""
        ...

    async def request_cancel(self, stream_id: str) -> CancelResult:
        """Record a durable cancel intent and wake the owner; idempotent."""
        ...

    async def sweep(self) -> list[str]:
        """End every running stream whose lease expired with ``error`` ``interrupted``.

        Returns:
            The streams this call ended (each is ended by exactly one sweeper).
        """
        ...

    async def aclose(self) -> None:
        """Flush what is buffered and release every resource."""
        ...
