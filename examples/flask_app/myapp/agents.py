"""The example's agent: a plain generator that streams an OpenAI-compatible upstream.

It uses ``requests`` with ``stream=True``, as most sync code does. streambridge runs
it in a worker thread; when the stream ends early (the client left, a timeout, a
cancel), the generator is closed and its ``finally`` closes the upstream response,
so the upstream stops generating too.

Configuration (this app's own, not streambridge's): ``MYAPP_UPSTREAM_URL``, the base
URL of an OpenAI-compatible API (default ``http://127.0.0.1:11434/v1``, Ollama's),
``MYAPP_UPSTREAM_KEY`` and ``MYAPP_MODEL``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import requests

from async_core import Agent, AgentFailure, AgentRegistry, AgentRequest

UPSTREAM_URL = os.environ.get("MYAPP_UPSTREAM_URL", "http://127.0.0.1:11434/v1")
UPSTREAM_KEY = os.environ.get("MYAPP_UPSTREAM_KEY", "")
MODEL = os.environ.get("MYAPP_MODEL", "llama3.2")


def assistant(request: AgentRequest) -> Iterator[str]:
    """Stream the upstream's reply to ``request.messages``, one text delta at a time."""
    response = requests.post(
        f"{UPSTREAM_URL}/chat/completions",
        json={"model": MODEL, "stream": True, "messages": list(request.messages)},
        headers={"Authorization": f"Bearer {UPSTREAM_KEY}"} if UPSTREAM_KEY else {},
        stream=True, timeout=(5, 60))
    try:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith(b"data:"):
                continue  # blank separators, comments
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:  # the upstream failed mid-stream: an in-band error event
                raise AgentFailure(f"upstream error: {chunk['error'].get('message')}")
            for choice in chunk.get("choices", []):
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield text
    finally:
        response.close()  # also when the stream is abandoned: the upstream sees it


def registry() -> AgentRegistry:
    """The agents this app streams."""
    return AgentRegistry([Agent("assistant", sync_fn=assistant)])
