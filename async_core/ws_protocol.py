"""The WebSocket protocol of ``GET /v1/ws``, sans-IO: the same on every path.

Pure functions and numbers, no sockets and no event loop, so the async endpoint
(``async_core/_ws.py``, Starlette) and the legacy route (``legacy_bridge``, Flask
under gunicorn gthread or gevent) read the same client messages and send the same
bytes:

- client messages: ``check_frame`` (binary and oversized frames), ``decode``
  (JSON object), ``check_type``, ``stream_id_of``, ``cursor_of``, ``start_call``
  (the ``POST /v1/chat`` body of a ``start``);
- server messages: ``server_message`` (``{"stream_id","id","event","data"}``),
  ``error_message`` (the contract's ``{"code","message"}`` plus the message type),
  ``event_message`` (one native NDJSON frame of a stream, as a socket message),
  ``text_frame`` (a message's wire bytes: the legacy path writes its frames itself);
- the numbers: close codes, the send queue's slow-consumer bounds (``SendBudget``),
  the protocol ping interval and the largest frame.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from typing import Any

from .exceptions import BadRequest, PayloadTooLarge, StreamBridgeError
from .protocol import ROUTES, ChatCall, parse_chat

__all__ = [
    "CLOSE_POLICY", "CLOSE_SLOW", "CLOSE_TOO_BIG", "CLOSE_WAIT", "MAX_FRAME",
    "MESSAGE_TYPES", "PING_INTERVAL", "PING_MESSAGE", "SEND_QUEUE", "SEND_QUEUE_BYTES",
    "STREAM_FORMAT", "SendBudget", "WS_PATH", "check_frame", "check_type", "cursor_of",
    "decode", "error_message", "event_message", "message_head", "relay_frame",
    "server_message", "start_call", "stream_id_of", "text_frame",
]

WS_PATH = "/v1/ws"
SEND_QUEUE = 256  # messages waiting for a slow reader before the socket is closed 1013
SEND_QUEUE_BYTES = 1 << 20  # or characters: the engine merges the deltas of a slow reader
CLOSE_POLICY = 1008  # a bad API key given in the Authorization header
CLOSE_TOO_BIG = 1009  # a frame over MAX_FRAME (the server's WebSocket layer closes)
CLOSE_SLOW = 1013  # the client did not read its messages (send queue full)
CLOSE_WAIT = 5.0  # seconds a close frame may wait behind unread data, then TCP drops
MAX_FRAME = 16 << 20  # largest message the WebSocket layer reads (uvicorn's ws_max_size)
PING_INTERVAL = 20.0  # seconds between protocol pings (uvicorn's ws_ping_interval)
STREAM_FORMAT = {"format": "ndjson"}  # a socket follows the native events with log ids
MESSAGE_TYPES = ("auth", "start", "resume", "cancel")


class SendBudget:
    """The slow-consumer policy of one socket's send queue, counted sans-IO.

    ``admit`` each message before queueing it and ``sent`` it once written: a message
    that would take the queue past ``SEND_QUEUE`` messages or ``SEND_QUEUE_BYTES``
    characters is refused, and the socket is then closed with ``CLOSE_SLOW``.
    """

    __slots__ = ("chars", "messages")

    def __init__(self) -> None:
        self.messages = 0
        self.chars = 0

    def admit(self, text: str) -> bool:
        """Count ``text`` in; False when the queue is over its bounds (close 1013)."""
        self.chars += len(text)
        if self.chars > SEND_QUEUE_BYTES or self.messages >= SEND_QUEUE:
            return False
        self.messages += 1
        return True

    def sent(self, text: str) -> None:
        """Count ``text`` out of the queue (it was written)."""
        self.messages -= 1
        self.chars -= len(text)


def check_frame(text: str | None, limit: int) -> str:
    """The text of a received frame, checked.

    Args:
        text: the frame's text, or None for a binary frame.
        limit: the largest message, in UTF-8 bytes (``max_body_bytes``).

    Raises:
        BadRequest: a binary frame (``binary_frame``).
        PayloadTooLarge: a message over ``limit`` bytes.
    """
    if text is None:
        raise BadRequest("binary frames are not accepted: send JSON text", code="binary_frame")
    if len(text.encode()) > limit:
        raise PayloadTooLarge(f"message exceeds the limit of {limit} bytes")
    return text


def decode(text: str) -> dict[str, Any]:
    """A client message as its JSON object.

    Raises:
        BadRequest: not JSON (``bad_json``), or not an object (``bad_message``).
    """
    try:
        msg = json.loads(text)
    except ValueError:
        raise BadRequest("the message is not valid JSON", code="bad_json") from None
    if not isinstance(msg, dict):
        raise BadRequest("a message must be a JSON object", code="bad_message")
    return msg


def check_type(kind: Any) -> str:
    """``kind`` if it is one of ``MESSAGE_TYPES``.

    Raises:
        BadRequest: any other type (``unknown_type``).
    """
    if kind not in MESSAGE_TYPES:
        raise BadRequest(f"unknown message type {kind!r}: start, resume, cancel or auth",
                         code="unknown_type")
    return str(kind)


def stream_id_of(kind: str, msg: Mapping[str, Any]) -> str:
    """The ``stream_id`` a ``resume`` or ``cancel`` names.

    Raises:
        BadRequest: it is missing or not a non-empty string.
    """
    stream_id = msg.get("stream_id")
    if not isinstance(stream_id, str) or not stream_id:
        raise BadRequest(f"{kind} needs a stream_id")
    return stream_id


def cursor_of(msg: Mapping[str, Any]) -> str | None:
    """The ``cursor`` of a ``resume`` (an event id), or None for the stream's start.

    Raises:
        BadRequest: a cursor that is not a string (``bad_cursor``).
    """
    cursor = msg.get("cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise BadRequest("cursor must be a string (an event id)", code="bad_cursor")
    return cursor


def start_call(msg: Mapping[str, Any], *, default_agent: str, max_body: int,
               max_messages: int) -> ChatCall:
    """The chat call of a ``start``: its fields are a ``POST /v1/chat`` body.

    Raises:
        BadRequest: a bad chat body, or ``stream`` false.
    """
    body = {k: v for k, v in msg.items() if k not in ("type", "ref")}
    call = parse_chat(ROUTES["/v1/chat"], json.dumps(body).encode(), headers={},
                      query=STREAM_FORMAT, default_agent=default_agent,
                      max_body=max_body, max_messages=max_messages)
    if not call.stream:
        raise BadRequest("stream must be true over a WebSocket")
    return call


def server_message(stream_id: str | None, event: str, data: Any,
                   event_id: str | None = None) -> str:
    """One server message: ``{"stream_id","id","event","data"}`` as compact JSON."""
    return json.dumps({"stream_id": stream_id, "id": event_id, "event": event, "data": data},
                      separators=(",", ":"))


def error_message(error: StreamBridgeError, stream_id: str | None, kind: Any) -> str:
    """An ``error`` message: the contract's ``{"code", "message"}`` and the message type."""
    data = {**error.body()["error"], "type": kind if isinstance(kind, str) else None}
    return server_message(stream_id, "error", data)


def event_message(stream_id: str, frame: bytes | str) -> str:
    """One native NDJSON frame of ``stream_id`` (an event or a ``ping``) as a message,
    with the event's log id as ``id`` (None for a heartbeat)."""
    event = json.loads(frame)
    name, event_id = event.pop("event"), event.pop("id", None)
    event.pop("seq", None)
    return server_message(stream_id, name, event, event_id)


PING_MESSAGE = server_message(None, "ping", None)  # the socket-level heartbeat

# A native NDJSON line with its log id: ``{"event":<kind>,"seq":<n>,"id":<id>,...}``
# (``wire.NativeNDJSONEncoder``, ASCII only). Its members after the id are the
# message's ``data`` as they are: no decode and re-encode per token.
_LINE = re.compile(r'\{"event":"([a-z_]+)","seq":\d+,"id":"([^"\\]*)",(.*)\}\n?\Z', re.DOTALL)


def message_head(stream_id: str) -> str:
    """The start of every relayed message of ``stream_id`` (for ``relay_frame``)."""
    return '{"stream_id":' + json.dumps(stream_id) + ',"id":"'


def relay_frame(stream_id: str, head: str, frame: bytes) -> str:
    """The socket message of one native NDJSON frame of ``stream_id`` (``head`` is
    ``message_head(stream_id)``), without decoding the event when it has a log id."""
    text = frame.decode()
    found = _LINE.match(text)
    if found is None:  # no log id (a heartbeat) or an event without members
        return event_message(stream_id, text)
    kind, event_id, members = found.groups()
    return f'{head}{event_id}","event":"{kind}","data":{{{members}}}}}'


def text_frame(payload: bytes) -> bytes:
    """The wire bytes of one server text frame carrying ``payload`` (UTF-8) whole:
    FIN, opcode 1, unmasked (RFC 6455 5.1: a server never masks), no extension (every
    path declines permessage-deflate), the length in 7, 16 or 64 bits (5.2)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload
