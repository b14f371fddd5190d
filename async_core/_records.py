"""What the engine records of a stream: its outcome, its identity and its final story."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from .agents import AgentRequest

if TYPE_CHECKING:
    from ._settings import StreamPolicy
    from .wire import Encoder


class Outcome(StrEnum):
    """How a stream ended; recorded exactly once per stream."""

    COMPLETED = "completed"
    CLIENT_DISCONNECTED = "client_disconnected"
    CANCELLED = "cancelled"
    FIRST_CHUNK_TIMEOUT = "first_chunk_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    TOTAL_TIMEOUT = "total_timeout"
    SEND_TIMEOUT = "send_timeout"
    AGENT_ERROR = "agent_error"
    REJECTED = "rejected"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """Who a stream is: ids and the labels its metrics carry."""

    stream_id: str
    conversation_id: str
    agent: str
    path: str
    format: str


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """What finish hooks receive: the whole story of one stream."""

    info: StreamInfo
    request: AgentRequest
    outcome: Outcome
    text: str
    tokens: int
    ttfc: float | None
    duration: float
    started_at: float
    error_code: str | None
    usage: dict[str, int] | None


FinishHook = Callable[[StreamRecord], "Awaitable[None] | None"]
# Called while streaming with (info, text so far, tokens so far); must return at once
# (persistence files a checkpoint for its background writer, see store/_writer.py).
ProgressHook = Callable[[StreamInfo, str, int], None]


class Streamable(Protocol):
    """What a transport serves: a ``StreamSession``, or a ``Subscription`` to a log.

    The transport iterates ``frames()`` (headers leave with the first frame), applies
    ``policy.send_timeout``, calls ``abort(reason)`` when it gives up and
    ``finish(reason)`` exactly once at the end.
    """

    @property
    def encoder(self) -> Encoder:
        """The client's wire format (its ``media_type`` is the Content-Type)."""
        ...

    @property
    def policy(self) -> StreamPolicy:
        """Heartbeat, header hold and send timeout."""
        ...

    @property
    def info(self) -> StreamInfo:
        """Ids and labels."""
        ...

    def frames(self) -> AsyncGenerator[bytes, None]:
        """The bytes to send, ending after the terminal event."""
        ...

    def abort(self, reason: Outcome) -> None:
        """The transport gave up (client gone, send timeout)."""
        ...

    async def finish(self, reason: Outcome = ...) -> object:
        """The response ended; called exactly once."""
        ...
