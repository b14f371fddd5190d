"""The example's agents: a sync one built on ``requests`` and an async one.

``upstream``: a plain generator that streams an OpenAI-compatible
``/v1/chat/completions`` with ``requests`` (``stream=True``). streambridge runs it
in a worker thread; a slow client blocks its ``yield`` (backpressure), and a
disconnect closes the upstream response at once through ``request.cancel``.

``poet``: an async generator that runs on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator

import requests

from async_core import Agent, AgentRegistry, AgentRequest

# Your own configuration: where the upstream LLM server listens.
UPSTREAM_URL = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:11434/v1")
UPSTREAM_KEY = os.environ.get("UPSTREAM_API_KEY", "")


def upstream(request: AgentRequest) -> Iterator[str]:
    """Stream the reply of the upstream's chat completions, one delta at a time."""
    response = requests.post(
        f"{UPSTREAM_URL}/chat/completions",
        json={"model": "example", "messages": list(request.messages), "stream": True},
        headers={"Authorization": f"Bearer {UPSTREAM_KEY}"} if UPSTREAM_KEY else {},
        stream=True, timeout=(5, 60))
    # A disconnect closes the upstream socket from the cancelling thread.
    request.cancel.add_callback(response.close)
    with response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                text = choice.get("delta", {}).get("content")
                if text:
                    yield text


async def poet(request: AgentRequest) -> AsyncIterator[str]:
    """Stream a short poem, word by word (``options.words``, ``options.pace_ms``)."""
    words = int(request.options.get("words", 8))
    pace = float(request.options.get("pace_ms", 20)) / 1000
    for i in range(words):
        yield f"verse{i} "
        await asyncio.sleep(pace)


AGENTS = AgentRegistry([Agent("upstream", sync_fn=upstream), Agent("poet", async_fn=poet)])
