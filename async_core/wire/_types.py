"""Wire formats, their media types, and what every encoder needs to know."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ._events import Event

__all__ = ["FORMATS", "MEDIA_TYPES", "Encoder", "Format", "StreamMeta"]

Format = Literal["sse", "ndjson", "text", "openai", "ollama-chat", "ollama-generate"]
"""A wire format: three native ones and three compatible with real clients."""

FORMATS: tuple[Format, ...] = ("sse", "ndjson", "text", "openai", "ollama-chat", "ollama-generate")

MEDIA_TYPES: dict[Format, str] = {
    "sse": "text/event-stream",
    "ndjson": "application/x-ndjson",
    "text": "text/plain; charset=utf-8",
    "openai": "text/event-stream",
    "ollama-chat": "application/x-ndjson",
    "ollama-generate": "application/x-ndjson",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamMeta:
    """What an encoder needs about a stream besides its events.

    Attributes:
        stream_id: the stream's id (OpenAI chunks use ``chatcmpl-<stream_id>``).
        conversation_id: the conversation the stream belongs to.
        model: the agent name, reported as the model on compatible routes.
        created: when the stream started, in unix seconds.
        include_usage: OpenAI ``stream_options.include_usage``: send a last
            chunk with ``usage`` and empty ``choices``.
        clock: unix-seconds clock for per-chunk timestamps (Ollama
            ``created_at``); injectable so tests are deterministic.
    """

    stream_id: str
    conversation_id: str
    model: str
    created: float
    include_usage: bool = False
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)


class Encoder(Protocol):
    """Turns one stream's events into bytes for one wire format.

    An encoder is stateful and belongs to a single stream (it may remember, for
    example, whether the first delta was sent). It never does I/O.
    ``encode`` may return ``b""`` for an event the format does not carry; the
    caller should then send nothing.
    """

    @property
    def media_type(self) -> str:
        """The ``Content-Type`` of the response."""
        ...

    def encode(self, event: Event, event_id: str | None = None) -> bytes:
        """Frame one event.

        Args:
            event: the next event of the stream, in ``seq`` order.
            event_id: the event's id in the stream log (the SSE ``id:``, NDJSON's
                ``"id"``); formats without ids ignore it. None: the ``seq`` is the id.

        Returns:
            The bytes to send (possibly ``b""``).
        """
        ...

    def heartbeat(self) -> bytes:
        """Frame a keepalive that every client of the format ignores (possibly ``b""``)."""
        ...
