"""The two apps that ``scripts/bench_engine.py`` compares, as uvicorn factories.

Both serve ``POST /v1/chat`` with a JSON body ``{"agent": "bench", "message": ...,
"options": {"tokens", "interval_ms", "first_token_delay_ms"}}`` and stream the same
async agent, :func:`bench_agent`, whose tokens are their own production wall time
(``"1712345678.123456 "``), so a client can compute each token's lag.

- ``engine_app``: the streambridge engine (``async_core.create_app``) with the
  agent registered as ``bench``; native SSE, default policy, ``max_streams=2000``.
- ``baseline_app``: a bare Starlette route returning ``StreamingResponse`` over
  the same agent, one minimal ``data: <token>\\n\\n`` frame per token.

Run with ``python -m uvicorn --factory --app-dir scripts bench_apps:engine_app``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from async_core import Agent, AgentRegistry, AgentRequest, Settings, create_app
from async_core.agents import check_type

AGENT_NAME = "bench"
MAX_STREAMS = 2000


def bench_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the benchmark agent's options and fill in defaults.

    Raises:
        async_core.exceptions.BadRequest: an option has the wrong type or range.
    """
    tokens = check_type(options, "tokens", int, minimum=0, maximum=10_000_000)
    interval = check_type(options, "interval_ms", (int, float), minimum=0, maximum=600_000)
    delay = check_type(options, "first_token_delay_ms", (int, float), minimum=0,
                       maximum=600_000)
    return {"tokens": 200 if tokens is None else tokens,
            "interval_ms": 10.0 if interval is None else float(interval),
            "first_token_delay_ms": float(delay or 0.0)}


async def bench_agent(request: AgentRequest) -> AsyncIterator[str]:
    """Yield ``tokens`` tokens, each the wall time at which it was produced.

    Waits ``first_token_delay_ms`` before the first token and ``interval_ms``
    between tokens; with ``interval_ms=0`` it never awaits (unpaced).
    """
    opts = bench_options(request.options)
    interval = opts["interval_ms"] / 1000.0
    if opts["first_token_delay_ms"]:
        await asyncio.sleep(opts["first_token_delay_ms"] / 1000.0)
    for n in range(opts["tokens"]):
        if n and interval:
            await asyncio.sleep(interval)
        yield f"{time.time():.6f} "


def engine_app() -> Starlette:
    """The streambridge engine serving :func:`bench_agent` as agent ``bench``."""
    registry = AgentRegistry([Agent(name=AGENT_NAME, async_fn=bench_agent,
                                    validate=bench_options)])
    # No transcript store: the baseline stores nothing either (the store's own cost is
    # measured by running with STREAMBRIDGE_BENCH_STORE=1).
    store = "" if os.environ.get("STREAMBRIDGE_BENCH_STORE") else "none"
    return create_app(Settings(max_streams=MAX_STREAMS, default_agent=AGENT_NAME,
                               database_url=store),
                      registry=registry)


def baseline_app() -> Starlette:
    """A bare Starlette ``StreamingResponse`` over :func:`bench_agent` (no engine)."""

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        agent_request = AgentRequest(({"role": "user", "content": body.get("message", "")},),
                                     body.get("options") or {})

        async def frames() -> AsyncIterator[bytes]:
            async for token in bench_agent(agent_request):
                yield f"data: {token}\n\n".encode()

        return StreamingResponse(frames(), media_type="text/event-stream")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/v1/chat", chat, methods=["POST"]),
                             Route("/healthz", healthz)])


# ``STREAMBRIDGE_AGENTS=bench_apps:AGENTS`` (with ``scripts`` on the path): the same agent
# in a real ``streambridge serve`` process (``scripts/bench_ws.py``).
AGENTS = [Agent(name=AGENT_NAME, async_fn=bench_agent, validate=bench_options)]
