"""Errors of the stream log.

The cursor errors are ``BadRequest``s (400 before the first byte), an unknown stream is a
``NotFound`` (404), so the HTTP layer maps them with no table of its own::

    BadRequest (async_core.exceptions)       400 bad_request
    └── CursorError                          400 bad_cursor
        ├── MalformedCursor                  400 bad_cursor
        ├── CursorTooLong                    400 bad_cursor
        └── ForeignCursor                    400 bad_cursor   (a cursor of another stream)
    NotFound (async_core.exceptions)         404 not_found
    └── StreamNotFound                       404 stream_not_found (unknown, expired or foreign)
    StreamLogError                           500 stream_log_error
    ├── StreamExists                         a second generation of a stream was refused
    ├── StaleOwner                           an append by a fenced-off owner was refused
    ├── StreamClosed                         an append after the terminal entry
    ├── StreamCancelled                      a sync producer's stream was cancelled
    └── LogUnavailable                       the backend is unreachable (names the setting)
"""

from __future__ import annotations

from ..exceptions import BadRequest, NotFound, StreamBridgeError


class CursorError(BadRequest):
    """A cursor or ``Last-Event-ID`` that is not one of this stream's event ids."""

    code = "bad_cursor"


class MalformedCursor(CursorError):
    """The text is not an event id at all."""


class CursorTooLong(CursorError):
    """The text is longer than any event id can be."""


class ForeignCursor(CursorError):
    """A well-formed event id of another stream."""


class StreamNotFound(NotFound):
    """No such stream: never created, expired after its retention, or another tenant's."""

    code = "stream_not_found"


class StreamLogError(StreamBridgeError):
    """Base class of the log's own failures."""

    code = "stream_log_error"


class StreamExists(StreamLogError):
    """The stream already exists: a resume never starts a second generation."""


class StaleOwner(StreamLogError):
    """This owner's lease expired or was taken over: its appends are refused."""


class StreamClosed(StreamLogError):
    """The stream already has its terminal entry."""


class StreamCancelled(StreamLogError):
    """A cancel intent was recorded for the stream a sync producer publishes: stop."""

    code = "cancelled"


class LogUnavailable(StreamLogError):
    """The backend cannot be reached; the message names the setting to check."""
