"""Wire formats of streambridge.

sans-IO: pure functions from events to bytes and bytes to events; stdlib only;
no I/O, no clock except injected (``StreamMeta.clock``). Both serving paths use
these encoders, so they emit byte-identical frames.

- ``_events``: the event model (``Delta``, ``State``, ``Done``, ``Error``).
- ``_sse``, ``_ndjson``: framing primitives and incremental decoders.
- ``_native``: ``POST /v1/chat`` as SSE, NDJSON or plain text.
- ``_compat``: OpenAI chat-completion chunks and Ollama chat/generate NDJSON.
- ``_encoders``: ``make_encoder``, ``buffered_body``, ``error_body``.
"""

from __future__ import annotations

from ._encoders import buffered_body, error_body, make_encoder
from ._events import Delta, Done, Error, Event, FinishReason, State, TerminalEvent, is_terminal
from ._exceptions import WireDecodeError
from ._native import event_kind, payload
from ._ndjson import NDJSONDecoder, encode_ndjson
from ._sse import SSEDecoder, SSEMessage, encode_sse
from ._types import FORMATS, MEDIA_TYPES, Encoder, Format, StreamMeta

__all__ = [
    "FORMATS",
    "MEDIA_TYPES",
    "Delta",
    "Done",
    "Encoder",
    "Error",
    "Event",
    "FinishReason",
    "Format",
    "NDJSONDecoder",
    "SSEDecoder",
    "SSEMessage",
    "State",
    "StreamMeta",
    "TerminalEvent",
    "WireDecodeError",
    "buffered_body",
    "encode_ndjson",
    "encode_sse",
    "error_body",
    "event_kind",
    "is_terminal",
    "make_encoder",
    "payload",
]
