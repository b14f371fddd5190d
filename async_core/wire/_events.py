"""The event model of a stream: what an engine emits and what encoders frame.

Sans-IO and stdlib only. Every stream is a sequence of events numbered by
``seq`` (1, 2, 3, ...) and ends with exactly one terminal event, ``Done`` or
``Error``. Heartbeats are not events: they carry no ``seq`` and no content,
and each encoder knows how to frame one for its wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True, slots=True)
class Delta:
    """Text produced by the agent.

    Attributes:
        seq: position of the event in the stream, starting at 1.
        text: the new text (several agent outputs may be coalesced into one).
        tokens: cumulative count of agent outputs up to and including this one.
    """

    seq: int
    text: str
    tokens: int


@dataclass(frozen=True, slots=True)
class State:
    """An agent's intermediate state (e.g. one cycle of a tool loop).

    Attributes:
        seq: position of the event in the stream.
        data: a JSON-serialisable mapping chosen by the agent.
    """

    seq: int
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Done:
    """The successful end of a stream (terminal).

    Attributes:
        seq: position of the event in the stream.
        finish_reason: why generation stopped (``stop`` or ``length``).
        tokens: total count of agent outputs.
        ttfc_ms: time from the start of the stream to the first delta.
        duration_ms: time from the start of the stream to this event.
        conversation_id: the conversation the stream belongs to.
        usage: optional provider usage (prompt/completion token counts).
    """

    seq: int
    finish_reason: FinishReason
    tokens: int
    ttfc_ms: float | None
    duration_ms: float
    conversation_id: str
    usage: dict[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Error:
    """The failed end of a stream (terminal).

    Attributes:
        seq: position of the event in the stream.
        code: a stable machine-readable code (``idle_timeout``, ``agent_error``,
            ``shutdown``, ...).
        message: a human-readable sentence; never a stack trace.
        retryable: whether the same request may succeed if sent again.
    """

    seq: int
    code: str
    message: str
    retryable: bool = False


Event = Delta | State | Done | Error
TerminalEvent = Done | Error


def is_terminal(event: Event) -> bool:
    """Return True for the events that end a stream (``Done`` and ``Error``)."""
    return isinstance(event, (Done, Error))
