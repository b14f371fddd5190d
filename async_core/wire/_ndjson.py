"""Newline-delimited JSON: encoding and an incremental decoder.

Lines end in ``b"\\n"`` only, split at byte level. Never ``str.splitlines()``:
it also splits on U+2028, U+2029, U+0085 and a few control characters, which is
exactly how httpx ``iter_lines`` breaks NDJSON written with
``ensure_ascii=False`` (see PITFALLS.md, "Wire formats and real clients").
That is why ``encode_ndjson`` always escapes non-ASCII characters.
"""

from __future__ import annotations

import json
from typing import Any

from ._exceptions import WireDecodeError
from ._json import dumps_ascii

__all__ = ["NDJSONDecoder", "encode_ndjson"]

_BOM = b"\xef\xbb\xbf"


def encode_ndjson(obj: Any) -> bytes:
    """Encode one object as one NDJSON line.

    ``ensure_ascii=True`` is deliberate and must stay: the output is pure ASCII,
    so no line splitter (``str.splitlines`` included) can cut the line, and no
    lone surrogate can make UTF-8 encoding fail.

    Args:
        obj: a JSON-serialisable value.

    Returns:
        Compact JSON followed by ``b"\\n"``.

    Raises:
        TypeError: if ``obj`` is not JSON-serialisable.
        ValueError: for NaN or infinite floats (not JSON).
    """
    return dumps_ascii(obj).encode("ascii") + b"\n"


class NDJSONDecoder:
    """Incremental NDJSON decoder (sans-IO).

    Chunks may be split anywhere, also inside a multi-byte UTF-8 sequence.
    Empty (or whitespace-only) lines are skipped, a trailing ``\\r`` is
    tolerated, and a UTF-8 BOM at the start of the stream is dropped.
    """

    def __init__(self, *, max_line_bytes: int | None = None) -> None:
        """Create a decoder.

        Args:
            max_line_bytes: if set, a line longer than this raises
                ``WireDecodeError`` instead of growing the buffer without bound.
                Treat that error as fatal: the rest of the long line would be
                read as new lines.
        """
        self._max_line = max_line_bytes
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to contain no b"\n"
        self._at_start = True

    def feed(self, data: bytes) -> list[Any]:
        """Consume a chunk and return the objects of every completed line.

        Args:
            data: the next bytes, split anywhere.

        Returns:
            The decoded objects, in order.

        Raises:
            WireDecodeError: a line is not UTF-8 JSON or exceeds the limit. The
                bad line is consumed; ``decoded`` holds the objects before it and
                the rest stays buffered for the next ``feed`` (``b""`` will do).
        """
        self._buffer += data
        out: list[Any] = []
        while True:
            index = self._buffer.find(b"\n", self._scanned)
            if index < 0:
                self._scanned = len(self._buffer)
                if self._max_line is not None and self._scanned > self._max_line:
                    line = bytes(self._buffer)
                    self._buffer.clear()
                    self._scanned = 0
                    raise self._too_long(line, out)
                return out
            line = bytes(self._buffer[:index])
            del self._buffer[: index + 1]
            self._scanned = 0
            if self._max_line is not None and len(line) > self._max_line:
                raise self._too_long(line, out)
            self._decode_line(line, out)

    def flush(self) -> list[Any]:
        """Decode a last line left without its ``b"\\n"`` (call at end of stream).

        Returns:
            The object of that line, or an empty list if nothing was buffered.

        Raises:
            WireDecodeError: the last line is not UTF-8 JSON.
        """
        line = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        out: list[Any] = []
        self._decode_line(line, out)
        return out

    def _too_long(self, line: bytes, decoded: list[Any]) -> WireDecodeError:
        return WireDecodeError(
            f"NDJSON line of {len(line)} bytes exceeds the limit of {self._max_line}",
            line=line,
            decoded=decoded,
        )

    def _decode_line(self, line: bytes, out: list[Any]) -> None:
        if self._at_start:
            self._at_start = False
            if line.startswith(_BOM):
                line = line[len(_BOM) :]
        if not line.strip():
            return
        try:
            out.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WireDecodeError(
                f"NDJSON line is not UTF-8 JSON: {exc}", line=line, decoded=out
            ) from exc
