"""A request body as JSON, strictly: what ``json.loads`` accepts but a server must not.

``json.loads`` takes more than what we can safely hold, and fails in ways that are not
``JSONDecodeError``. ``load_body`` refuses, each with a ``BadRequest`` (400) naming the
field:

- ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON numbers; a NaN interval froze a
  gevent worker: comparisons with NaN are all false, so range checks pass it), and
  numbers such as ``1e400`` that overflow to infinity;
- integers longer than ``MAX_INT_DIGITS`` (Python refuses more than 4,300 digits with
  a ``ValueError``, which was a 500);
- nesting deeper than ``MAX_DEPTH`` (100,000 levels raised ``RecursionError``: a 500);
- lone surrogates (``"\\ud800"`` is valid JSON, but no UTF-8 store, log or socket can
  encode it), in any string, key or value.

Sans-IO and stdlib only; both paths parse every chat body here (``protocol.parse_chat``).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .exceptions import BadRequest

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "load_body"]

MAX_DEPTH = 32
MAX_INT_DIGITS = 100
_SURROGATE = re.compile("[\ud800-\udfff]")
_KEY_SHOWN = 40  # characters of a key quoted in an error message


class _Refused:
    """Stands in for a number the parser must not return; the walk names its field."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


def _constant(name: str) -> _Refused:
    return _Refused(f"must be a finite number, not {name}")


def _float(text: str) -> float | _Refused:
    value = float(text)
    if math.isfinite(value):
        return value
    return _Refused(f"must be a finite number ({text[:24]} overflows to infinity)")


def _int(text: str) -> int | _Refused:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        return _Refused(f"must be an integer of at most {MAX_INT_DIGITS} digits")
    return int(text)


def load_body(body: bytes) -> Any:
    """Parse ``body`` as JSON and check every value in it (see the module docstring).

    Args:
        body: the raw request body (UTF-8, or UTF-16/32 as ``json.loads`` detects).

    Returns:
        The parsed value (``None`` for an empty body).

    Raises:
        BadRequest: the body is not JSON, or holds a value listed above, naming where.
    """
    if not body:
        return None
    try:
        data = json.loads(body, parse_constant=_constant, parse_float=_float,
                          parse_int=_int)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadRequest(f"request body nests deeper than {MAX_DEPTH} levels") from None
    check_value(data)
    return data


def check_value(data: Any, where: str = "") -> None:
    """Refuse refused numbers, lone surrogates and deep nesting anywhere in ``data``.

    Iterative, so a deep value cannot exhaust the stack here either.

    Raises:
        BadRequest: naming the first offending field (``messages[0].content``).
    """
    stack: list[tuple[Any, str, int]] = [(data, where, 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value) is not None:
                raise BadRequest(f"{path or 'the body'} contains a lone surrogate "
                                 "(\\ud800-\\udfff), which is not valid Unicode text")
        elif isinstance(value, _Refused):
            raise BadRequest(f"{path or 'the body'} {value.why}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise BadRequest(f"{path or 'the body'} must be a finite number")
        elif isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise BadRequest(f"{path or 'the body'} nests deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                stack.append((item, _child(path, key), depth + 1))


def _child(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _SURROGATE.search(key) is not None:
        raise BadRequest(f"{path or 'the body'} has a key with a lone surrogate "
                         "(\\ud800-\\udfff), which is not valid Unicode text")
    shown = key if len(key) <= _KEY_SHOWN else key[:_KEY_SHOWN] + "..."
    return f"{path}.{shown}" if path else shown
