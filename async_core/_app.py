"""The native ASGI server: Starlette routes over the stream service."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import _metrics as metrics
from ._asgi import SessionResponse
from ._lifecycle import install_sigterm_drain
from ._page import PAGE_CONTENT_TYPE, cors_headers, render_page
from ._records import FinishHook, Outcome
from ._settings import PathName, Settings
from ._sources import SyncRunner
from .agents import AgentRegistry
from .auth import Principal
from .exceptions import BadRequest, PayloadTooLarge, StreamBridgeError
from .protocol import ROUTES, drain_limit, parse_chat
from .service import StreamService

log = logging.getLogger("streambridge.app")


def create_app(settings: Settings | None = None, *, registry: AgentRegistry | None = None,
               sync_runner: SyncRunner | None = None, hooks: Sequence[FinishHook] = (),
               path: PathName = "async", drain_on_sigterm: bool = True) -> Starlette:
    """Build the native ASGI application serving the HTTP contract.

    Args:
        settings: configuration (default: ``Settings.from_env()``).
        registry: the agents (default: the built-in ``demo``).
        sync_runner: bridge for sync agents (``legacy_bridge`` provides one).
        hooks: finish hooks called once per stream (persistence, webhooks).
        path: the ``X-Stream-Path`` and metrics label of this app.
        drain_on_sigterm: chain a SIGTERM handler that drains streams first.
    """
    settings = settings or Settings.from_env()
    service = StreamService(settings, path=path, registry=registry,
                            sync_runner=sync_runner, hooks=hooks)

    def principal(request: Request) -> Principal:
        return service.api_keys.authenticate(request.scope["path"],
                                             request.headers.get("authorization"))

    async def chat(request: Request) -> Response:
        caller = principal(request)
        route = ROUTES[request.scope["path"]]
        body = await _read_body(request, settings.max_body_bytes)
        call = parse_chat(route, body, headers=request.headers, query=request.query_params,
                          default_agent=settings.default_agent,
                          max_body=settings.max_body_bytes,
                          max_messages=settings.max_messages)
        session = await service.open(call, caller)
        headers = service.headers(session)
        headers.update(cors_headers(request.headers.get("origin")))
        if call.stream:
            return SessionResponse(session, headers)
        try:
            events = await session.collect()
        finally:
            await session.finish(Outcome.CLIENT_DISCONNECTED)
        return JSONResponse(service.body(session, events), headers=headers)

    page_body = render_page(path)

    async def page(request: Request) -> Response:
        return Response(page_body, media_type=PAGE_CONTENT_TYPE)

    async def conversation(request: Request) -> Response:
        caller = principal(request)
        found = await service.conversation(request.path_params["conversation_id"], caller)
        return JSONResponse(found)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready = service.lifecycle.ready
        return JSONResponse({"ready": ready, "active_streams": service.lifecycle.active},
                            status_code=200 if ready else 503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if drain_on_sigterm:
            install_sigterm_drain(service.lifecycle)
        await service.start()  # the store's engine belongs to this (uvicorn's) loop
        try:
            yield
        finally:
            await service.aclose()  # after the drain: flushes every final transcript

    routes = [Route(p, chat, methods=["POST"]) for p in ROUTES]
    routes += [Route("/", page), Route("/healthz", healthz), Route("/readyz", readyz),
               Route("/metrics", metrics_endpoint),
               Route("/v1/conversations/{conversation_id}", conversation)]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        StreamBridgeError: _error_response, HTTPException: _http_error,
        Exception: _unexpected})
    app.state.service = service
    return app


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory``: the app configured from ``STREAMBRIDGE_*``."""
    return create_app(Settings.from_env())


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 once it passes ``limit`` (declared or counted).

    A body over the limit is read on and dropped, up to ``drain_limit``, before the 413
    leaves: a server that closes a socket with unread data makes the kernel send a reset,
    and the client then often never sees the 413 (issue 10). Past that bound the 413
    leaves at once with ``Connection: close``.
    """
    declared = _content_length(request)
    too_large = declared is not None and declared > limit
    if too_large and declared is not None and declared > drain_limit(limit):
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                too_large = True
                chunks.clear()
                if size > drain_limit(limit):
                    break
            elif not too_large:
                chunks.append(chunk)
    except ClientDisconnect:
        # The client left, or the request read timeout cut it, mid-body: nobody to
        # answer, and no traceback (issue 10 items 3 and 12).
        log.info("%s %s: the client left before its body arrived", request.method,
                 request.url.path)
        raise BadRequest("the request body did not arrive") from None
    if too_large:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return b"".join(chunks)


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    # isascii: "\xb2" (superscript two, latin-1) passes isdigit() but not int().
    return int(raw) if raw and raw.isascii() and raw.isdigit() else None


async def _error_response(request: Request, error: Exception) -> Response:
    assert isinstance(error, StreamBridgeError)
    # CORS on errors too, so the page shows a 429/503 instead of a bare network error.
    headers = {**error.headers(), **cors_headers(request.headers.get("origin"))}
    if isinstance(error, PayloadTooLarge):
        headers["Connection"] = "close"  # what is left of the body is not read
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    body: dict[str, Any] = {"error": {"code": code, "message": str(error.detail),
                                      "type": code}}
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


async def _unexpected(request: Request, error: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path,
                  exc_info=error)
    body = {"error": {"code": "internal_error", "message": "internal server error",
                      "type": "internal_error"}}
    return JSONResponse(body, status_code=500)
