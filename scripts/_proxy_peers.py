"""The peers of ``scripts/bench_proxy.py``: what a team writes instead of streambridge.

Each peer is a small, real proxy in front of the fake upstream's Ollama ``/api/chat``,
started as its own process (one worker, 127.0.0.1, ephemeral port). Every one serves
``POST /api/chat``: it forwards the client's body and its ``X-Fake-Script`` header to
``$PEER_UPSTREAM/api/chat`` and streams the answer back as it arrives.

- ``starlette-httpx`` / ``starlette-httpx-uvloop``: a bare Starlette route, one shared
  ``httpx.AsyncClient``, ``StreamingResponse(response.aiter_bytes())``; uvicorn on the
  asyncio loop, or on uvloop (what uvicorn picks when uvloop is installed).
- ``sse-starlette``: the relay the tutorials show: ``aiter_lines()``, ``json.loads`` of
  each line and one ``EventSourceResponse`` event per token (``{"text": ...}``).
- ``flask-gthread`` / ``flask-gevent``: a bare Flask view returning
  ``requests.post(..., stream=True).iter_content(None)`` (a session per thread, or per
  greenlet under gevent), under ``gunicorn -k gthread --threads 128`` or ``-k gevent``.

None of them parses more than it must: they are the floor a proxy can reach, and
what streambridge's proxy path (parse, engine, encoder) is compared with.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from _benchlib import SCRIPTS, gunicorn_cmd

from async_core.harness import HOST

__all__ = ["PEERS", "flask_app", "peer_command", "sse_app", "starlette_app"]

PEERS = ("starlette-httpx", "starlette-httpx-uvloop", "sse-starlette", "flask-gthread",
         "flask-gevent")


def _upstream() -> str:
    return os.environ["PEER_UPSTREAM"].rstrip("/") + "/api/chat"


def _forwarded(headers: Any) -> dict[str, str]:
    out = {"Content-Type": "application/json"}
    if headers.get("X-Fake-Script"):
        out["X-Fake-Script"] = headers["X-Fake-Script"]
    return out


def _healthz_body() -> bytes:
    return b'{"status":"ok"}'


def starlette_app() -> Any:
    """Bare Starlette + httpx: the upstream's bytes straight to the client."""
    import httpx
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    client = httpx.AsyncClient(timeout=None, limits=httpx.Limits(
        max_connections=1000, max_keepalive_connections=1000))
    url = _upstream()

    async def chat(request: Request) -> Response:
        upstream = client.build_request("POST", url, content=await request.body(),
                                        headers=_forwarded(request.headers))
        response = await client.send(upstream, stream=True)
        return StreamingResponse(response.aiter_bytes(), status_code=response.status_code,
                                 media_type="application/x-ndjson",
                                 background=BackgroundTask(response.aclose))

    async def healthz(request: Request) -> Response:
        return Response(_healthz_body(), media_type="application/json")

    return Starlette(routes=[Route("/api/chat", chat, methods=["POST"]),
                             Route("/healthz", healthz)])


def sse_app() -> Any:
    """sse-starlette relay: each upstream line decoded, one SSE event per token."""
    import httpx
    from sse_starlette.sse import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    client = httpx.AsyncClient(timeout=None, limits=httpx.Limits(
        max_connections=1000, max_keepalive_connections=1000))
    url = _upstream()

    async def chat(request: Request) -> Response:
        body, headers = await request.body(), _forwarded(request.headers)

        async def events() -> AsyncIterator[dict[str, str]]:
            async with client.stream("POST", url, content=body, headers=headers) as r:
                async for line in r.aiter_lines():
                    if not line:
                        continue
                    obj = json.loads(line)
                    text = (obj.get("message") or {}).get("content")
                    if text:
                        yield {"event": "delta", "data": json.dumps({"text": text})}
                    if obj.get("done"):
                        yield {"event": "done", "data": "{}"}

        return EventSourceResponse(events(), ping=15)

    async def healthz(request: Request) -> Response:
        return Response(_healthz_body(), media_type="application/json")

    return Starlette(routes=[Route("/api/chat", chat, methods=["POST"]),
                             Route("/healthz", healthz)])


def flask_app() -> Any:
    """Bare Flask + ``requests``: ``iter_content(None)`` of the upstream, as it arrives."""
    import requests
    from flask import Flask, Response, request

    app = Flask("proxy_peer")
    url = _upstream()
    local = threading.local()  # a Session is not thread-safe: one per thread/greenlet

    @app.post("/api/chat")
    def chat() -> Response:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        r = session.post(url, data=request.get_data(), headers=_forwarded(request.headers),
                         stream=True)

        def body() -> Iterator[bytes]:
            try:
                yield from r.iter_content(chunk_size=None)
            finally:
                r.close()

        return Response(body(), status=r.status_code, content_type="application/x-ndjson")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response(_healthz_body(), content_type="application/json")

    return app


def peer_command(name: str) -> list[str]:
    """The command line that serves peer ``name`` (one worker, loopback, ephemeral port).

    Raises:
        KeyError: ``name`` is not one of ``PEERS``.
    """
    if name.startswith("flask-"):
        worker = name.removeprefix("flask-")
        extra = ["--threads", "128"] if worker == "gthread" else []
        return [*gunicorn_cmd("_proxy_peers:flask_app()", ["-k", worker, *extra]),
                "--chdir", str(SCRIPTS)]
    factory = {"starlette-httpx": "starlette_app", "starlette-httpx-uvloop": "starlette_app",
               "sse-starlette": "sse_app"}[name]
    loop = "uvloop" if name.endswith("-uvloop") else "asyncio"
    return [sys.executable, "-m", "uvicorn", "--factory", f"_proxy_peers:{factory}",
            "--app-dir", str(SCRIPTS), "--host", HOST, "--port", "0", "--backlog", "4096",
            "--no-access-log", "--log-level", "info", "--no-use-colors", "--loop", loop]
