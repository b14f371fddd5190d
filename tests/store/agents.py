"""Agents for the persistence tests, loaded into real servers by ``STREAMBRIDGE_AGENTS``.

``history`` streams, token by token, a JSON description of the messages it was
given (so a test sees what an earlier conversation turned into), then
``options.tokens`` filler tokens ``"t<i> "`` at ``options.interval_ms``, and raises
after ``options.fail_after`` tokens when that is set.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

from async_core import Agent, AgentFailure, AgentRequest

MARK = "\n--\n"


def _plan(request: AgentRequest) -> tuple[list[str], float, int]:
    seen = json.dumps([[m["role"], m["content"]] for m in request.messages])
    opts = request.options
    tokens = [seen, MARK, *(f"t{i} " for i in range(int(opts.get("tokens", 3))))]
    fail_after = int(opts.get("fail_after", -1))
    return tokens, float(opts.get("interval_ms", 0)) / 1000, fail_after


def history_sync(request: AgentRequest) -> Iterator[str]:
    """Sync form."""
    tokens, interval, fail_after = _plan(request)
    for i, token in enumerate(tokens):
        if i == fail_after:
            raise AgentFailure("the history agent failed on purpose")
        if i > 2 and interval:
            time.sleep(interval)
        yield token


async def history_async(request: AgentRequest) -> AsyncIterator[str]:
    """Async form."""
    tokens, interval, fail_after = _plan(request)
    for i, token in enumerate(tokens):
        if i == fail_after:
            raise AgentFailure("the history agent failed on purpose")
        if i > 2 and interval:
            await asyncio.sleep(interval)
        yield token


AGENTS = [Agent(name="history", sync_fn=history_sync, async_fn=history_async)]


def seen(text: str) -> list[list[str]]:
    """The messages a ``history`` reply says its agent was given."""
    return json.loads(text.split(MARK, 1)[0])  # type: ignore[no-any-return]
