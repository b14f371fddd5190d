"""A FastAPI app of your own that streams through streambridge.

Run it (from this folder): ``uvicorn app:app --host 127.0.0.1 --port 8000``.

- ``POST /chat``: your route; streams the sync ``upstream`` agent (``requests``).
- ``POST /poem``: your route; streams the async ``poet`` agent, with your own body.
- ``/llm/...``: streambridge's whole HTTP contract, mounted under a prefix
  (``/llm/v1/chat``, ``/llm/v1/chat/completions`` for the ``openai`` client,
  ``/llm/v1/conversations/{id}``, ``/llm/metrics``, ...).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from agents import AGENTS
from fastapi import FastAPI, Request
from fastapi.responses import Response

import legacy_bridge
from async_core import StreamEngine

engine = StreamEngine(registry=AGENTS, sync_runner=legacy_bridge.janus_runner())


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Your own start-up here; the engine opens its store and installs the drain.
    async with engine.lifespan(app):
        yield
    # Your own shutdown here: streams are drained and transcripts flushed by now.


app = FastAPI(lifespan=lifespan)
app.mount("/llm", engine.router())


@app.get("/")
async def index() -> dict[str, str]:
    return {"hello": "this is your app"}


@app.post("/chat")
async def chat(request: Request) -> Response:
    """The native chat body (``message`` or ``messages``), answered by ``upstream``."""
    return await engine.respond(request, agent="upstream")


@app.post("/poem")
async def poem(request: Request, words: int = 8, pace_ms: float = 20) -> Response:
    """Your own request shape: query parameters become the agent's request."""
    body = {"message": "a poem", "agent": "poet",
            "options": {"words": words, "pace_ms": pace_ms},
            "conversation_id": request.headers.get("x-conversation-id")}
    if body["conversation_id"] is None:
        del body["conversation_id"]
    return await engine.respond(request, body=body)
