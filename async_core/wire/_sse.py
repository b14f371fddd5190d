"""Server-sent events: framing (``encode_sse``) and an incremental decoder.

The decoder follows the WHATWG "event stream interpretation" algorithm
(https://html.spec.whatwg.org/multipage/server-sent-events.html):

- lines end in CR, LF or CRLF, including a CR at the end of one chunk and its LF
  at the start of the next; lines are split on bytes (CR and LF never occur
  inside a multi-byte UTF-8 sequence), so UTF-8 split across chunks is safe;
- a UTF-8 BOM at the very start of the stream is dropped;
- lines starting with ``:`` are comments and ignored; a line without a colon is
  a field name with an empty value; one space after the colon is stripped;
- a blank line dispatches the event, unless the data buffer is empty (unlike
  openai-python's decoder, see openai-python#2722).

Only CR and LF end a line: U+2028, U+2029 and U+0085 are ordinary characters here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._exceptions import WireDecodeError

__all__ = ["SSEDecoder", "SSEMessage", "encode_sse"]

_NEWLINE = re.compile(r"\r\n|\r|\n")
_LINE_END = re.compile(rb"[\r\n]")
_STRIP_NAME = str.maketrans("", "", "\r\n")
_STRIP_ID = str.maketrans("", "", "\r\n\0")
_BOM = "\ufeff"


def encode_sse(
    *,
    data: str | None = None,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
    comment: str | None = None,
) -> bytes:
    """Frame one server-sent event as UTF-8 bytes, terminated by a blank line.

    Fields are written in the order comment, ``id``, ``event``, ``retry``, ``data``.
    Multi-line ``data`` (CR, LF or CRLF) becomes several ``data:`` lines, so a
    decoder gives it back with every line ending normalised to ``"\\n"``. CR and
    LF are removed from ``event`` and ``id`` (and NUL from ``id``, which would
    make a WHATWG decoder ignore the field). A comment-only frame is
    ``b": text\\n\\n"``.

    Args:
        data: the event's data; ``""`` is a real (empty) data line.
        event: the event type.
        id: the event id (the client's Last-Event-ID).
        retry: the reconnection time in milliseconds.
        comment: a comment, e.g. ``"ping"`` for a heartbeat.

    Returns:
        The encoded frame.

    Raises:
        ValueError: if no field is given (a bare blank line is never a frame:
            some clients dispatch it as an empty event), or ``retry`` is negative.
    """
    lines: list[str] = []
    if comment is not None:
        lines.extend(": " + part for part in _NEWLINE.split(comment))
    if id is not None:
        lines.append("id: " + id.translate(_STRIP_ID))
    if event is not None:
        lines.append("event: " + event.translate(_STRIP_NAME))
    if retry is not None:
        if retry < 0:
            raise ValueError(f"retry must be >= 0, got {retry}")
        lines.append(f"retry: {int(retry)}")
    if data is not None:
        lines.extend("data: " + part for part in _NEWLINE.split(data))
    if not lines:
        raise ValueError("an SSE frame needs at least one field or a comment")
    lines.append("\n")
    # "replace" only matters for lone surrogates, which UTF-8 cannot carry.
    return "\n".join(lines).encode("utf-8", "replace")


@dataclass(frozen=True, slots=True, kw_only=True)
class SSEMessage:
    """One dispatched server-sent event.

    Attributes:
        event: the event type (``"message"`` when the frame had no ``event:``).
        data: the data lines joined by ``"\\n"``.
        id: the last event id seen on the stream so far (it persists across
            events, as in WHATWG's ``lastEventId``); ``""`` if none.
        retry: the ``retry:`` value given inside this event's block, if any.
    """

    event: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None


class SSEDecoder:
    """Incremental WHATWG server-sent events decoder (sans-IO).

    Feed it bytes as they arrive; it returns the events completed so far.
    An event not terminated by a blank line when the stream ends is discarded,
    as the specification requires.

    Attributes:
        last_event_id: the last event id buffer (what a reconnect sends as
            ``Last-Event-ID``).
        retry: the last valid ``retry:`` value seen on the stream, if any.
    """

    def __init__(self, *, max_line_bytes: int | None = None) -> None:
        """Create a decoder.

        Args:
            max_line_bytes: if set, a line longer than this raises
                ``WireDecodeError`` instead of growing the buffer without bound.
                Treat that error as fatal: the rest of the long line would be
                read as new lines.
        """
        self.last_event_id = ""
        self.retry: int | None = None
        self._max_line = max_line_bytes
        self._buffer = bytearray()
        self._skip_lf = False  # the previous chunk ended in CR
        self._first_line = True
        self._event = ""
        self._data: list[str] = []
        self._event_retry: int | None = None

    def feed(self, data: bytes) -> list[SSEMessage]:
        """Consume a chunk of the stream.

        Args:
            data: the next bytes, split anywhere.

        Returns:
            The events dispatched by this chunk, in order.

        Raises:
            WireDecodeError: a line exceeded ``max_line_bytes``.
        """
        out: list[SSEMessage] = []
        start = 0
        for match in _LINE_END.finditer(data):
            end = match.start()
            if self._skip_lf and end == start and data[end] == 0x0A:
                # LF of a CRLF whose CR ended the previous line (maybe in the previous chunk).
                self._skip_lf = False
                start = end + 1
                continue
            self._buffer += data[start:end]
            line = bytes(self._buffer)
            self._buffer.clear()
            self._skip_lf = data[end] == 0x0D
            start = end + 1
            self._check_length(line)
            message = self._process_line(line.decode("utf-8", "replace"))
            if message is not None:
                out.append(message)
        if start < len(data):
            self._skip_lf = False
            self._buffer += data[start:]
            self._check_length(self._buffer)
        return out

    def _check_length(self, line: bytes | bytearray) -> None:
        if self._max_line is not None and len(line) > self._max_line:
            size = len(line)
            self._buffer.clear()
            raise WireDecodeError(
                f"SSE line of {size} bytes exceeds the limit of {self._max_line}", line=bytes(line)
            )

    def _process_line(self, line: str) -> SSEMessage | None:
        if self._first_line:
            self._first_line = False
            if line.startswith(_BOM):
                line = line[1:]
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry = self._event_retry = int(value)
        return None

    def _dispatch(self) -> SSEMessage | None:
        data, event, retry = self._data, self._event, self._event_retry
        self._data, self._event, self._event_retry = [], "", None
        if not data:
            # WHATWG: an empty data buffer resets the event type and dispatches nothing.
            return None
        return SSEMessage(
            event=event or "message", data="\n".join(data), id=self.last_event_id, retry=retry
        )
