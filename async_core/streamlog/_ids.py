"""Event ids and cursors, sans-IO (stdlib only).

An event id is opaque to clients and looks like ``3f9a1c-k2x9q0-1-17``: a tag of the
stream (6 hex digits of a hash of its id), the stream's epoch (1-16 of ``[0-9a-z]``),
then two decimal numbers, ``major-minor``, increasing within an epoch (the memory
backend counts ``n-0``; the Redis backend uses ``fence-seq``, which is also the
entry's Redis Streams id). The epoch changes whenever the log of a stream is
recreated (Redis lost its data), so a cursor of an older epoch is answered with an
explicit reset instead of a silent gap (Centrifugo's design). The tag makes a cursor
of another stream a 400, not a reset. Ids never contain ``, & = ? /`` or spaces
(Durable Streams §8) and are at most 64 characters.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from .exceptions import CursorTooLong, ForeignCursor, MalformedCursor

MAX_CURSOR_LENGTH = 64
MAX_NUMBER = 2**53 - 1  # Redis Lua numbers are doubles: ids stay exact below this
START = "-1"  # the cursor that means "from the beginning" (Durable Streams' sentinel)
_EPOCH = re.compile(r"[0-9a-z]{1,16}")
_ID = re.compile(r"([0-9a-f]{6})-([0-9a-z]{1,16})-(0|[1-9][0-9]{0,15})-(0|[1-9][0-9]{0,15})")


@dataclass(frozen=True, slots=True, order=False)
class EventId:
    """One entry's position in one epoch of a stream's log.

    Attributes:
        epoch: the log's epoch when the entry was written.
        major: first number of the position.
        minor: second number of the position.
    """

    epoch: str
    major: int
    minor: int

    def __post_init__(self) -> None:
        if not _EPOCH.fullmatch(self.epoch):
            raise ValueError(f"epoch must be 1-16 of [0-9a-z], got {self.epoch!r}")
        if not (0 <= self.major <= MAX_NUMBER and 0 <= self.minor <= MAX_NUMBER):
            raise ValueError("id numbers must be within 0..2**53-1")

    @classmethod
    def made(cls, epoch: str, major: int, minor: int) -> EventId:
        """An id the log makes itself (its own epoch, its own counter): not re-checked.

        ``EventId(...)`` validates the epoch and range of every id (about 0.5 µs of the
        memory log's per-entry ``append``, measured); a client's cursor still goes
        through ``decode_cursor`` and the checked constructor.
        """
        eid = object.__new__(cls)
        object.__setattr__(eid, "epoch", epoch)
        object.__setattr__(eid, "major", major)
        object.__setattr__(eid, "minor", minor)
        return eid

    @property
    def position(self) -> tuple[int, int]:
        """The comparable position within the epoch."""
        return (self.major, self.minor)

    @property
    def native(self) -> str:
        """The position as a Redis Streams id (``major-minor``)."""
        return f"{self.major}-{self.minor}"


def new_epoch() -> str:
    """Return a fresh random epoch (10 base-36 digits)."""
    n = secrets.randbits(50)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    for _ in range(10):
        n, r = divmod(n, 36)
        out += digits[r]
    return out


def stream_tag(stream_id: str) -> str:
    """Return the 6-hex-digit tag that ties an event id to its stream."""
    return hashlib.blake2s(stream_id.encode("utf-8", "surrogatepass"), digest_size=3).hexdigest()


def encode_id(stream_id: str, event_id: EventId) -> str:
    """Return the opaque text of ``event_id`` of stream ``stream_id`` (the SSE ``id:``)."""
    return f"{stream_tag(stream_id)}-{event_id.epoch}-{event_id.major}-{event_id.minor}"


def decode_cursor(stream_id: str, text: str | None) -> EventId | None:
    """Parse a client's cursor (``?cursor=`` or ``Last-Event-ID``) for ``stream_id``.

    Args:
        stream_id: the stream the cursor is presented to.
        text: the cursor; ``None``, empty or ``-1`` mean "from the beginning".

    Returns:
        The event id after which to read, or ``None`` for the beginning.

    Raises:
        CursorTooLong: longer than ``MAX_CURSOR_LENGTH``.
        MalformedCursor: not an event id.
        ForeignCursor: an event id of another stream.
    """
    if text is None:
        return None
    if len(text) > MAX_CURSOR_LENGTH:
        raise CursorTooLong(f"cursor is longer than {MAX_CURSOR_LENGTH} characters")
    if text in ("", START):
        return None
    m = _ID.fullmatch(text)
    if m is None:
        raise MalformedCursor(f"cursor {text[:MAX_CURSOR_LENGTH]!r} is not an event id")
    tag, epoch, major, minor = m.groups()
    if tag != stream_tag(stream_id):
        raise ForeignCursor(f"cursor {text!r} belongs to another stream")
    if int(major) > MAX_NUMBER or int(minor) > MAX_NUMBER:
        raise MalformedCursor(f"cursor {text!r} is out of range")
    return EventId(epoch, int(major), int(minor))


def parse_native(native: str | bytes) -> tuple[int, int]:
    """Return the position of a Redis Streams id (``b"12-3"`` → ``(12, 3)``)."""
    if isinstance(native, bytes):
        native = native.decode()
    major, _, minor = native.partition("-")
    return (int(major), int(minor or 0))
