"""Compact JSON for SSE ``data:`` lines.

SSE is UTF-8, so non-ASCII text may travel raw (a third of the bytes of
``ensure_ascii=True`` for CJK text). Two kinds of characters are escaped anyway:

- U+0085, U+2028 and U+2029: WHATWG decoders only split on CR/LF, but a client
  that reads SSE with ``str.splitlines()`` (httpx ``iter_lines``) would cut the
  line there. JSON escapes every other line-breaking character (< U+0020).
- lone surrogates, which UTF-8 cannot encode; escaped, they survive ``json.loads``.

Both only occur inside JSON strings, where ``\\uXXXX`` means the same character.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["dumps_ascii", "dumps_compact"]

_UNSAFE = re.compile("[\u0085\u2028\u2029\ud800-\udfff]")
# One encoder each, built once: json.dumps with arguments builds a new one per call.
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def dumps_compact(obj: Any) -> str:
    """Serialise ``obj`` as compact JSON that is safe on one SSE ``data:`` line.

    Args:
        obj: a JSON-serialisable value.

    Returns:
        JSON text with no CR, LF, U+0085, U+2028, U+2029 or lone surrogate.

    Raises:
        TypeError: if ``obj`` is not JSON-serialisable.
        ValueError: for NaN or infinite floats (not JSON).
    """
    text = _COMPACT(obj)
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape, text)


def dumps_ascii(obj: Any) -> str:
    """Serialise ``obj`` as compact, pure-ASCII JSON (the NDJSON form).

    Raises:
        TypeError: if ``obj`` is not JSON-serialisable.
        ValueError: for NaN or infinite floats (not JSON).
    """
    return _ASCII(obj)
