"""The HTTP contract's Starlette routes over one ``StreamService``.

``contract_routes`` builds the routes; each handler knows the contract path it
serves, so the routes work under any prefix (``app.mount("/llm", engine.router())``).
Both the reference app (``_app.create_app``) and ``StreamEngine.router()``
(``_embed``) serve these routes: a module of its own, so neither imports the other
back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from . import _metrics as metrics
from ._asgi import SessionResponse
from ._engine import StreamSession
from ._page import PAGE_CONTENT_TYPE, cors_headers, render_page
from ._records import Outcome
from ._ws import websocket_endpoint
from .exceptions import BadRequest, PayloadTooLarge, StreamBridgeError
from .protocol import ROUTES, drain_limit, parse_chat, parse_resume
from .protocol import Route as ApiRoute
from .service import StreamService
from .ws_protocol import WS_PATH

# The logger keeps the name it had in _app: operators filter on it.
log = logging.getLogger("streambridge.app")
Endpoint = Callable[[Request], Awaitable[Response]]
STREAMS = "/v1/streams"  # the contract path of resume and cancel (and of their API keys)


def contract_routes(service: StreamService, *,
                    guard: Callable[[], None] | None = None) -> list[BaseRoute]:
    """The HTTP contract's routes over ``service``, usable under any mount prefix.

    Errors become the contract's JSON bodies inside each handler, so the routes
    behave the same in an app that has no exception handlers of ours (FastAPI).

    Args:
        service: the stream service the routes use.
        guard: called before a chat or conversation request; raises a
            ``StreamBridgeError`` to refuse it (the engine's "not started" check).
    """
    def chat(route_path: str) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            if guard is not None:
                guard()
            return await chat_response(service, request, ROUTES[route_path], route_path)
        return endpoint

    page_body = render_page(service.path)

    async def page(request: Request) -> Response:
        return Response(page_body, media_type=PAGE_CONTENT_TYPE)

    async def conversation(request: Request) -> Response:
        if guard is not None:
            guard()
        caller = service.api_keys.authenticate("/v1/conversations",
                                               request.headers.get("authorization"))
        found = await service.conversation(request.path_params["conversation_id"], caller)
        return JSONResponse(found)

    async def resume(request: Request) -> Response:
        if guard is not None:
            guard()
        caller = service.api_keys.authenticate(STREAMS, request.headers.get("authorization"))
        cursor, fmt = parse_resume(request.headers, request.query_params)
        sub = await service.subscribe(request.path_params["stream_id"], cursor, fmt, caller)
        headers = service.headers(sub)
        headers.update(cors_headers(request.headers.get("origin")))
        return SessionResponse(sub, headers)

    async def cancel(request: Request) -> Response:
        if guard is not None:
            guard()
        caller = service.api_keys.authenticate(STREAMS, request.headers.get("authorization"))
        result = await service.cancel(request.path_params["stream_id"], caller)
        return JSONResponse(result, headers=cors_headers(request.headers.get("origin")))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready = service.lifecycle.ready
        return JSONResponse({"ready": ready, "active_streams": service.lifecycle.active},
                            status_code=200 if ready else 503)

    async def limits(request: Request) -> Response:
        return JSONResponse(await service.limits(request.headers.get("x-operator-key")))

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    routes: list[BaseRoute] = [Route(p, _contract_errors(chat(p)), methods=["POST"])
                               for p in ROUTES]
    routes += [Route("/", page), Route("/healthz", healthz), Route("/readyz", readyz),
               Route("/metrics", metrics_endpoint),
               Route("/v1/limits", _contract_errors(limits)),
               Route("/v1/conversations/{conversation_id}", _contract_errors(conversation)),
               Route("/v1/streams/{stream_id}", _contract_errors(resume), methods=["GET"]),
               Route("/v1/streams/{stream_id}/cancel", _contract_errors(cancel),
                     methods=["POST"]),
               WebSocketRoute(WS_PATH, websocket_endpoint(service, guard))]
    return routes


async def chat_response(service: StreamService, request: Request, route: ApiRoute,
                        auth_path: str, *, body: bytes | None = None,
                        agent: str | None = None) -> Response:
    """Parse, admit and answer one chat request (a stream, or one JSON body).

    Args:
        service: the stream service.
        request: the Starlette request (headers, query, disconnects).
        route: the API shape (``native``, ``openai``, ...).
        auth_path: the contract path the API keys are checked for.
        body: the request body to parse instead of the request's own.
        agent: the default agent (the native route's ``agent`` field wins).

    Raises:
        StreamBridgeError: bad input, unknown agent, auth, admission.
    """
    settings = service.settings
    caller = service.api_keys.authenticate(auth_path, request.headers.get("authorization"))
    if body is None:
        body = await _read_body(request, settings.max_body_bytes)
    call = parse_chat(route, body, headers=request.headers, query=request.query_params,
                      default_agent=agent or settings.default_agent,
                      max_body=settings.max_body_bytes,
                      max_messages=settings.max_messages)
    session = await service.open(call, caller)
    headers = service.headers(session)
    headers.update(cors_headers(request.headers.get("origin")))
    if call.background:  # the run goes on with no reader: where to read it
        location = f"{request.scope.get('root_path', '')}{STREAMS}/{session.info.stream_id}"
        return JSONResponse(service.accepted(session, location), status_code=202,
                            headers={**headers, "Location": location})
    if call.stream:
        return SessionResponse(session, headers)
    assert isinstance(session, StreamSession)  # only streamed calls are detached
    try:
        events = await session.collect()
    finally:
        await session.finish(Outcome.CLIENT_DISCONNECTED)
    return JSONResponse(service.body(session, events), headers=headers)


def error_response(error: StreamBridgeError, request_headers: Mapping[str, str]) -> Response:
    """The contract's JSON error response for ``error`` (CORS headers included)."""
    # CORS on errors too, so the page shows a 429/503 instead of a bare network error.
    headers = {**error.headers(), **cors_headers(request_headers.get("origin"))}
    if isinstance(error, PayloadTooLarge):
        headers["Connection"] = "close"  # what is left of the body is not read
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _contract_errors(endpoint: Endpoint) -> Endpoint:
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except StreamBridgeError as error:
            return error_response(error, request.headers)
    return wrapped


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
