"""Exceptions raised by the wire decoders.

Hierarchy::

    ValueError
     └── WireDecodeError      bytes that do not follow the wire format
"""

from __future__ import annotations

from typing import Any


class WireDecodeError(ValueError):
    """Bytes received from a peer do not follow the wire format.

    Raised by the incremental decoders for a line that is not valid UTF-8 or not
    JSON (NDJSON), or for a line longer than the decoder's limit. The offending
    line has already been consumed, so the decoder may be fed again.

    Attributes:
        line: the offending raw line (possibly truncated to its first 200 bytes).
        decoded: objects decoded by the same ``feed`` call before the error, so a
            caller that chooses to skip the bad line loses nothing else.
    """

    def __init__(self, message: str, *, line: bytes = b"", decoded: list[Any] | None = None):
        super().__init__(message)
        self.line = line[:200]
        self.decoded: list[Any] = decoded if decoded is not None else []
