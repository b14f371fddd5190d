"""Agents for the tests: like ``demo``, but they report what they did.

Loaded into real server processes with ``STREAMBRIDGE_AGENTS=tests.probe_agents:AGENTS``.
When its ``finally`` runs, a probe appends one JSON line to ``options.probe_file``:
how many tokens it produced and when it stopped, so a test can tell from outside
the server whether (and how fast) the agent was stopped.

Options: ``tokens`` (default 100), ``interval_ms`` (default 10; 0 never awaits or
sleeps), ``pad`` (extra bytes per token), ``probe_file``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from async_core import Agent, AgentRequest


def _opts(options: Mapping[str, Any]) -> tuple[int, float, str, str | None]:
    tokens = int(options.get("tokens", 100))
    interval = float(options.get("interval_ms", 10)) / 1000.0
    pad = "x" * int(options.get("pad", 0))
    return tokens, interval, pad, options.get("probe_file")


def _record(path: str | None, request: AgentRequest, produced: int, form: str) -> None:
    if not path:
        return
    line = json.dumps({"stream_id": request.stream_id, "produced": produced, "form": form,
                       "pid": os.getpid(), "t": time.time()})
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def probe_sync(request: AgentRequest) -> Iterator[str]:
    """Sync probe: pauses on its cancel token between tokens, records in ``finally``."""
    tokens, interval, pad, path = _opts(request.options)
    produced = 0
    try:
        for i in range(tokens):
            if i and interval and request.cancel.wait(interval):
                break
            produced += 1
            yield f"{i}{pad} "
    finally:
        _record(path, request, produced, "sync")


async def probe_async(request: AgentRequest) -> AsyncIterator[str]:
    """Async probe: awaits between tokens, or never when ``interval_ms`` is 0."""
    tokens, interval, pad, path = _opts(request.options)
    produced = 0
    try:
        for i in range(tokens):
            if i and interval:
                await asyncio.sleep(interval)
            produced += 1
            yield f"{i}{pad} "
    finally:
        _record(path, request, produced, "async")


AGENTS = [Agent(name="probe", sync_fn=probe_sync, async_fn=probe_async),
          Agent(name="probe-async", async_fn=probe_async),
          Agent(name="probe-sync", sync_fn=probe_sync)]


def probe_text(tokens: int, pad: int = 0) -> str:
    """The text a probe streams for ``tokens`` and ``pad``."""
    return "".join(f"{i}{'x' * pad} " for i in range(tokens))


def read_probe(path: str) -> list[dict[str, Any]]:
    """Return the records a probe wrote (empty when none yet)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _surrogate_plan(request: AgentRequest) -> tuple[list[str], float]:
    tokens, interval, _, _ = _opts(request.options)
    return [f"{i}{chr(0xD800) if i == 1 else ''} " for i in range(tokens)], interval


def surrogate_sync(request: AgentRequest) -> Iterator[str]:
    """Sync form of ``probe-surrogate``: its second token holds a lone surrogate."""
    parts, interval = _surrogate_plan(request)
    for i, part in enumerate(parts):
        if i and interval and request.cancel.wait(interval):
            break
        yield part


async def surrogate_async(request: AgentRequest) -> AsyncIterator[str]:
    """Async form of ``probe-surrogate`` (an agent's output no UTF-8 codec can encode)."""
    parts, interval = _surrogate_plan(request)
    for i, part in enumerate(parts):
        if i and interval:
            await asyncio.sleep(interval)
        yield part


AGENTS.append(Agent(name="probe-surrogate", sync_fn=surrogate_sync, async_fn=surrogate_async))


def switch_sync(request: AgentRequest) -> Iterator[str]:
    """``probe-switch``: one token, the serving process's ``sys.getswitchinterval()``."""
    yield repr(sys.getswitchinterval())


AGENTS.append(Agent(name="probe-switch", sync_fn=switch_sync))
