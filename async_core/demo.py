"""The built-in ``demo`` agent: deterministic, shaped by request options.

Options (all optional, in the request body's ``options``):

- ``tokens``: how many deltas to stream (default 64).
- ``interval_ms``: pause between deltas (default 20).
- ``first_token_delay_ms``: pause before the first delta (default 0).
- ``text``: what to stream, cut into word-sized pieces, repeated as needed.
- ``fail_at``: raise after that many deltas.
- ``fail_before_first``: fail the first N attempts before any output.
- ``states``: emit a ``state`` event every N deltas.

The same module gives the sync form (a generator, pausing on its cancel token) and the async
form (an async generator, ``asyncio.sleep``); both yield the same items.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from itertools import cycle, islice
from typing import Any

from .agents import Agent, AgentFailure, AgentItem, AgentRequest, StateUpdate, check_type
from .exceptions import BadRequest
from .protocol import SAMPLING_KEYS

DEFAULT_TEXT = (
    "Streaming is a conversation between a producer and a reader; "
    "the bridge keeps both honest. "
)
MAX_TOKENS = 10_000_000
_PIECE = re.compile(r"\S*\s*", re.UNICODE)


def pieces(text: str) -> list[str]:
    """Cut ``text`` into the pieces the demo agent streams (words with their spaces)."""
    return [p for p in _PIECE.findall(text) if p]


def demo_text(options: Mapping[str, Any] | None = None) -> str:
    """Return exactly the text the demo agent streams for ``options`` (for tests)."""
    opts = validate_options(options or {})
    return "".join(islice(cycle(pieces(opts["text"])), opts["tokens"]))


def validate_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check the demo agent's options and fill in defaults.

    Raises:
        BadRequest: an option has the wrong type or range, or is unknown.
    """
    known = {"tokens", "interval_ms", "first_token_delay_ms", "text", "fail_at",
             "fail_before_first", "states"}
    unknown = sorted(set(options) - known - SAMPLING_KEYS)
    if unknown:
        raise BadRequest(f"unknown demo option(s): {', '.join(unknown)}")
    text = options.get("text", DEFAULT_TEXT)
    if not isinstance(text, str) or not text:
        raise BadRequest("options.text must be a non-empty string")
    tokens = check_type(options, "tokens", int, minimum=0, maximum=MAX_TOKENS)
    interval = check_type(options, "interval_ms", (int, float), minimum=0, maximum=600_000)
    return {
        "tokens": 64 if tokens is None else tokens,
        "interval_ms": 20.0 if interval is None else float(interval),
        "first_token_delay_ms": check_type(options, "first_token_delay_ms", (int, float),
                                           minimum=0, maximum=600_000) or 0.0,
        "text": text,
        "fail_at": check_type(options, "fail_at", int, minimum=0),
        "fail_before_first": check_type(options, "fail_before_first", int, minimum=0) or 0,
        "states": check_type(options, "states", int, minimum=0) or 0,
    }


def _plan(request: AgentRequest) -> tuple[dict[str, Any], Iterator[str]]:
    opts = validate_options(request.options)
    if request.attempt < opts["fail_before_first"]:
        raise AgentFailure(f"demo agent: planned failure on attempt {request.attempt + 1}",
                           retryable=True)
    return opts, islice(cycle(pieces(opts["text"])), opts["tokens"])


def _extra(opts: dict[str, Any], n: int) -> AgentItem | None:
    """The item to emit after the n-th delta, if any (a state or a planned failure)."""
    if opts["fail_at"] is not None and n >= opts["fail_at"]:
        raise AgentFailure(f"demo agent: planned failure after {n} tokens")
    if opts["states"] and n % opts["states"] == 0:
        return StateUpdate({"step": n // opts["states"], "tokens": n})
    return None


def demo_sync(request: AgentRequest) -> Iterator[AgentItem]:
    """The demo agent as a plain generator (runs in a worker thread)."""
    opts, words = _plan(request)
    interval = opts["interval_ms"] / 1000.0
    cancel = request.cancel  # waits that end early when the client leaves
    if opts["first_token_delay_ms"] and cancel.wait(opts["first_token_delay_ms"] / 1000.0):
        return
    if opts["fail_at"] == 0:
        _extra(opts, 0)
    for n, word in enumerate(words, 1):
        if n > 1 and interval and cancel.wait(interval):
            return
        yield word
        extra = _extra(opts, n)
        if extra is not None:
            yield extra


async def demo_async(request: AgentRequest) -> AsyncIterator[AgentItem]:
    """The demo agent as an async generator (runs on the event loop).

    With ``interval_ms=0`` it never awaits: the engine must keep the loop
    responsive anyway (it yields to the loop between items).
    """
    opts, words = _plan(request)
    interval = opts["interval_ms"] / 1000.0
    if opts["first_token_delay_ms"]:
        await asyncio.sleep(opts["first_token_delay_ms"] / 1000.0)
    if opts["fail_at"] == 0:
        _extra(opts, 0)
    for n, word in enumerate(words, 1):
        if n > 1 and interval:
            await asyncio.sleep(interval)
        yield word
        extra = _extra(opts, n)
        if extra is not None:
            yield extra


DEMO_AGENT = Agent(name="demo", sync_fn=demo_sync, async_fn=demo_async,
                   validate=validate_options)
