"""The native wire formats of ``POST /v1/chat``: SSE, NDJSON and plain text.

SSE and NDJSON carry the same payload per event (see DESIGN.md, "The HTTP
contract"); SSE names the event in ``event:`` and puts its stream-log id in ``id:``
(for ``Last-Event-ID`` resume), NDJSON puts ``"event"``, ``"seq"`` and ``"id"`` (the
same id, for ``?cursor=``) first in the object. Without a log id (an encoder used on
its own) the id is the ``seq``, and NDJSON has no ``"id"``. Plain text carries only
the text, plus a readable line on error.
"""

from __future__ import annotations

from typing import Any

from ._events import Delta, Done, Error, Event, State
from ._json import dumps_ascii, dumps_compact
from ._ndjson import encode_ndjson
from ._sse import encode_sse
from ._types import MEDIA_TYPES

__all__ = ["NativeNDJSONEncoder", "NativeSSEEncoder", "TextEncoder", "event_kind", "payload"]

_PING_SSE = encode_sse(comment="ping")
_PING_NDJSON = encode_ndjson({"event": "ping"})
_SSE_DELTA = b'id: %b\nevent: delta\ndata: {"text":%b,"tokens":%d}\n\n'
_NDJSON_DELTA = b'{"event":"delta","seq":%d,"text":%b,"tokens":%d}\n'
_NDJSON_DELTA_ID = b'{"event":"delta","seq":%d,"id":"%b","text":%b,"tokens":%d}\n'


def event_kind(event: Event) -> str:
    """Return the native name of an event: ``delta``, ``state``, ``done`` or ``error``."""
    if isinstance(event, Delta):
        return "delta"
    if isinstance(event, State):
        return "state"
    if isinstance(event, Done):
        return "done"
    return "error"


def payload(event: Event) -> dict[str, Any]:
    """Return the native JSON object of an event (without ``event``/``seq``).

    Args:
        event: any event.

    Returns:
        ``{"text", "tokens"}`` for a delta; the state's own ``data`` for a state;
        ``{"finish_reason", "tokens", "ttfc_ms", "duration_ms", "conversation_id"}``
        (plus ``"usage"`` when known) for done; ``{"code", "message",
        "retryable"}`` for error.
    """
    if isinstance(event, Delta):
        return {"text": event.text, "tokens": event.tokens}
    if isinstance(event, State):
        return dict(event.data)
    if isinstance(event, Done):
        body: dict[str, Any] = {
            "finish_reason": event.finish_reason,
            "tokens": event.tokens,
            "ttfc_ms": event.ttfc_ms,
            "duration_ms": event.duration_ms,
            "conversation_id": event.conversation_id,
        }
        if event.usage is not None:
            body["usage"] = dict(event.usage)
        return body
    return {"code": event.code, "message": event.message, "retryable": event.retryable}


class NativeSSEEncoder:
    """Native SSE: ``id: <seq>``, ``event: <kind>``, ``data: <json>``; heartbeat ``: ping``."""

    media_type = MEDIA_TYPES["sse"]

    def encode(self, event: Event, event_id: str | None = None) -> bytes:
        """Frame one event as ``id: <id>\\nevent: <kind>\\ndata: <json>\\n\\n``."""
        eid = str(event.seq) if event_id is None else event_id
        if type(event) is Delta:  # the hot path: the same bytes, without building a dict
            return _SSE_DELTA % (eid.encode(), dumps_compact(event.text).encode(),
                                 event.tokens)
        return encode_sse(id=eid, event=event_kind(event), data=dumps_compact(payload(event)))

    def heartbeat(self) -> bytes:
        """Return the comment frame ``b": ping\\n\\n"``."""
        return _PING_SSE


class NativeNDJSONEncoder:
    """Native NDJSON: one object per event with ``"event"`` and ``"seq"`` first."""

    media_type = MEDIA_TYPES["ndjson"]

    def encode(self, event: Event, event_id: str | None = None) -> bytes:
        """Frame one event as ``{"event":<kind>,"seq":<n>,"id":<id>,...payload}\\n``.

        A state whose data has its own ``event``, ``seq`` or ``id`` key loses that
        key: the envelope keys win, so a client can always dispatch on ``event``.
        """
        if type(event) is Delta:  # the hot path: the same bytes, without building a dict
            text = dumps_ascii(event.text).encode()
            if event_id is None:
                return _NDJSON_DELTA % (event.seq, text, event.tokens)
            return _NDJSON_DELTA_ID % (event.seq, event_id.encode(), text, event.tokens)
        line: dict[str, Any] = {"event": event_kind(event), "seq": event.seq}
        if event_id is not None:
            line["id"] = event_id
        for key, value in payload(event).items():
            line.setdefault(key, value)
        return encode_ndjson(line)

    def heartbeat(self) -> bytes:
        """Return the line ``{"event":"ping"}``."""
        return _PING_NDJSON


class TextEncoder:
    """Plain UTF-8 text: only the deltas' text, and one readable line on error.

    Plain text has no in-band heartbeat: ``heartbeat()`` returns ``b""``. A
    stream served as text that must survive idle proxies should use SSE or NDJSON.
    Its end is the end of the body; a successful end adds nothing.
    """

    media_type = MEDIA_TYPES["text"]

    def encode(self, event: Event, event_id: str | None = None) -> bytes:
        """Return a delta's text; ``b""`` for state and done; an ``[error]`` line for error."""
        if isinstance(event, Delta):
            # "replace" only matters for lone surrogates, which UTF-8 cannot carry.
            return event.text.encode("utf-8", "replace")
        if isinstance(event, Error):
            return f"\n[error] {event.code}: {event.message}\n".encode("utf-8", "replace")
        return b""

    def heartbeat(self) -> bytes:
        """Return ``b""``: plain text has no in-band heartbeat."""
        return b""
