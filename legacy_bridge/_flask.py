"""The Flask side: ``StreamBridge``, an extension that streams through the engine.

Add it to an existing Flask app and declare streaming endpoints with
``bridge.endpoint(...)`` / ``@bridge.streaming(...)`` (``_endpoints.py``: the same
declarations the hybrid front serves natively), return ``bridge.stream(...)`` from a
view, or register ``bridge.blueprint()`` to serve the built-in HTTP contract. Views run in
gunicorn's threads or greenlets; every stream runs on the worker's event loop
behind the seam (``_seam.py``). This module never imports Starlette.
"""

from __future__ import annotations

import http
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, request
from werkzeug.exceptions import HTTPException

from async_core import (
    METRICS_CONTENT_TYPE,
    PAGE_CONTENT_TYPE,
    AgentRegistry,
    FinishHook,
    Settings,
    Streamable,
    StreamSession,
    cors_headers,
    default_registry,
    parse_chat,
    render_metrics,
    render_page,
)
from async_core.auth import Principal
from async_core.exceptions import BadRequest, PayloadTooLarge, StreamBridgeError
from async_core.protocol import ROUTES, ChatCall, Route, drain_limit, parse_resume
from async_core.wire import error_body
from async_core.ws_protocol import WS_PATH

from ._bridge import LOOP_BRIDGE, Bridge
from ._endpoints import Endpoint, ToRequest, endpoint_view, read_json_object
from ._frames import FIRST_ON_LOOP, STREAM_ONLY_HEADERS
from ._websocket import not_a_websocket, websocket_view

F = TypeVar("F", bound=ToRequest)

log = logging.getLogger("streambridge.app")
_READ = 65536
STREAMS = "/v1/streams"  # resume and cancel (the contract path their API keys are checked for)


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    # The same bytes as Starlette's JSONResponse, so both paths answer identically.
    data = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Response(data.encode(), status=status, headers=dict(headers or {}),
                    content_type="application/json")


def error_response(error: StreamBridgeError) -> Response:
    """The contract's JSON error for ``error`` (status, body, ``Retry-After``)."""
    # CORS on errors too, so the page at GET / shows a 429/503 from a second origin.
    headers = {**error.headers(), **cors_headers(request.headers.get("Origin"))}
    return _json(error.body(), error.status, headers)


class StreamBridge:
    """Flask extension: correct streaming (heartbeats, timeouts, backpressure, cancel).

    Args:
        app: the Flask app (or call ``init_app`` later).
        settings: policy and limits (default: ``Settings.from_env()``).
        registry: the agents (default: built-in plus ``settings.agents``).
        hooks: finish hooks called once per stream.
        websocket: serve ``GET /v1/ws`` on the app (``_websocket.py``); False leaves
            that path to the app.

    Attributes:
        registry: the agents this extension streams (the hybrid front serves them too).
        bridge: this extension's own bridge (a loop thread per worker process). A
            server that runs the loop itself (the hybrid front) passes its bridge in
            each request's environ instead (``LOOP_BRIDGE``); this one then never starts.
        endpoints: the declared streaming endpoints, by Flask endpoint name.
    """

    def __init__(self, app: Flask | None = None, *, settings: Settings | None = None,
                 registry: AgentRegistry | None = None,
                 hooks: tuple[FinishHook, ...] = (), websocket: bool = True) -> None:
        self.settings = settings or Settings.from_env()
        self.websocket = websocket
        self.registry = registry if registry is not None else default_registry(self.settings)
        self.bridge = Bridge(self.settings, registry=self.registry, hooks=hooks)
        self.endpoints: dict[str, Endpoint] = {}
        self._apps: list[Flask] = []
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the extension, its JSON error handler and the declared endpoints."""
        app.extensions["streambridge"] = self
        app.register_error_handler(StreamBridgeError, error_response)
        self._apps.append(app)
        for declared in self.endpoints.values():
            self._add_rule(app, declared)
        if self.websocket:
            app.add_url_rule(WS_PATH, "streambridge_ws", websocket_view(lambda: self.bridge),
                             websocket=True)
            # A plain GET is the 404 of an unknown route, as on the async path (a
            # websocket=True rule alone answers werkzeug's 400 for it).
            app.add_url_rule(WS_PATH, "streambridge_ws_http", not_a_websocket)

    def endpoint(self, path: str, *, agent: str, to_request: ToRequest,
                 name: str | None = None) -> Endpoint:
        """Declare a streaming endpoint: ``POST path`` streams ``agent``.

        ``to_request(body)`` gets the request's JSON object and returns the agent's
        request (``messages`` or ``message``, and optionally ``conversation_id``,
        ``stream``, ``options``). It runs in the Flask request context on every path
        (hybrid front included), so ``flask.g``, the session and the app's
        ``before_request`` auth apply; raise ``flask.abort(401)`` (or let a decorator do
        it) to refuse. Errors: a body that is not a JSON object is the contract's 400
        JSON, and so is a bad agent request; anything ``to_request`` raises is handled
        by the app's own error handlers.

        Args:
            path: the URL rule (Flask syntax; variables are in ``request.view_args``).
            agent: the agent's name (the migration flag routes by it).
            to_request: the user's request → the agent's request.
            name: the Flask endpoint name (default: ``to_request.__name__``).
        """
        declared = Endpoint(path, agent, to_request,
                            name or getattr(to_request, "__name__", path))
        if declared.name in self.endpoints:
            raise ValueError(f"streaming endpoint {declared.name!r} is already declared")
        self.endpoints[declared.name] = declared
        for app in self._apps:
            self._add_rule(app, declared)
        return declared

    def streaming(self, path: str, *, agent: str,
                  name: str | None = None) -> Callable[[F], F]:
        """Decorator form of ``endpoint``: the decorated function is ``to_request``.

        Decorators listed below it (``@login_required``) wrap ``to_request`` and so
        apply on every path.
        """

        def register(fn: F) -> F:
            self.endpoint(path, agent=agent, to_request=fn, name=name)
            return fn

        return register

    def _add_rule(self, app: Flask, declared: Endpoint) -> None:
        view = endpoint_view(declared, self.settings.max_body_bytes, self.stream)
        app.add_url_rule(declared.path, declared.name, view, methods=["POST"])

    def _bridge(self) -> Bridge:
        """The bridge of this request: the server's (``LOOP_BRIDGE``: a server that runs
        the loop itself, the hybrid front), else this extension's own."""
        bridge: Bridge | None = request.environ.get(LOOP_BRIDGE)
        return self.bridge if bridge is None else bridge

    def stream(self, agent: str, body: Mapping[str, Any] | None = None, *,
               route: Route = "native") -> Response:
        """Stream ``agent`` for the current request and return the Flask ``Response``.

        Args:
            agent: the agent's name.
            body: the chat request (default: the current request's JSON body).
            route: which API shape ``body`` follows (``native``, ``openai``, ...).

        Raises:
            StreamBridgeError: bad input, unknown agent, overloaded (a JSON 4xx/5xx).
        """
        data = dict(body if body is not None
                    else read_json_object(self.settings.max_body_bytes))
        data["agent" if route == "native" else "model"] = agent
        return self.respond(self._parse(route, json.dumps(data).encode()))

    def respond(self, call: ChatCall) -> Response:
        """Admit ``call`` and answer it: a streamed body, one JSON body, or ``202``."""
        bridge = self._bridge()
        service = bridge.service
        session: StreamSession | Streamable = bridge.call(service.open, call,
                                                          self._principal())
        headers = service.headers(session)
        if call.background:  # the run goes on with no reader: where to read it
            location = f"{request.script_root}{STREAMS}/{session.info.stream_id}"
            return _json(service.accepted(session, location), 202,
                         {**headers, "Location": location})
        if not call.stream:
            assert isinstance(session, StreamSession)  # only streamed calls are detached
            events = bridge.call(bridge.collect, session)
            return _json(service.body(session, events), headers=headers)
        return self._streamed(session, headers)

    def _streamed(self, session: Streamable, headers: dict[str, str]) -> Response:
        """The streamed response of ``session`` (a session or a log subscription)."""
        bridge = self._bridge()
        body = bridge.stream(session)
        # WSGI learns of a disconnect only at a failed write, and some servers never do
        # (a2wsgi#48). A server that does hears it offers this hook: body.close() then
        # stops the stream at once (the hybrid front, migration/hybrid.py).
        on_disconnect = request.environ.get("streambridge.on_disconnect")
        if on_disconnect is not None:
            on_disconnect(body.close)
        try:
            # Headers leave with the first frame, as on the async path. A server that
            # writes the body from its loop waits for that frame there (FIRST_ON_LOOP).
            if not request.environ.get(FIRST_ON_LOOP):
                body.first()
        except StreamBridgeError as error:  # failed before the first byte: plain HTTP
            kept = {k: v for k, v in headers.items() if k.lower() not in STREAM_ONLY_HEADERS}
            return _json(error.body(), error.status, {**kept, **error.headers()})
        # direct_passthrough: the server iterates (and closes) the body itself, without
        # werkzeug's two wrapping generators per chunk; it yields bytes only.
        response = Response(body, headers=headers,
                            content_type=bridge.service.content_type(session),
                            direct_passthrough=True)
        response.headers.pop("Content-Length", None)
        return response

    def _resume(self, stream_id: str) -> Response:
        """``GET /v1/streams/<id>``: replay the stream's log from the cursor, then follow."""
        bridge = self._bridge()
        caller = bridge.service.api_keys.authenticate(STREAMS,
                                                      request.headers.get("Authorization"))
        cursor, fmt = parse_resume({k.lower(): v for k, v in request.headers.items()},
                                   request.args)
        sub = bridge.call(bridge.service.subscribe, stream_id, cursor, fmt, caller)
        headers = bridge.service.headers(sub)
        headers.update(cors_headers(request.headers.get("Origin")))
        return self._streamed(sub, headers)

    def _cancel(self, stream_id: str) -> Response:
        """``POST /v1/streams/<id>/cancel``: stop the stream wherever it runs."""
        bridge = self._bridge()
        caller = bridge.service.api_keys.authenticate(STREAMS,
                                                      request.headers.get("Authorization"))
        return _json(bridge.call(bridge.service.cancel, stream_id, caller),
                     headers=cors_headers(request.headers.get("Origin")))

    def _principal(self) -> Principal:
        # The same sans-IO check as the Starlette app (async_core.auth).
        return self._bridge().service.api_keys.authenticate(
            request.path, request.headers.get("Authorization"))

    def _parse(self, route: Route, body: bytes) -> ChatCall:
        s = self.settings
        return parse_chat(route, body, headers={k.lower(): v for k, v in request.headers.items()},
                          query=request.args, default_agent=s.default_agent,
                          max_body=s.max_body_bytes, max_messages=s.max_messages)

    def blueprint(self, name: str = "streambridge", *, chat: bool = True,
                  page: bool = True) -> Blueprint:
        """A blueprint serving the HTTP contract: chat routes, health, readiness, metrics.

        Args:
            name: the blueprint's name.
            chat: include the built-in chat routes (``/v1/chat``, OpenAI, Ollama).
            page: include the demo page at ``/``.
        """
        bp = Blueprint(name, __name__)
        limit = self.settings.max_body_bytes

        def chat_view() -> Response:
            body = read_body(limit)
            response = self.respond(self._parse(ROUTES[request.path], body))
            response.headers.update(cors_headers(request.headers.get("Origin")))
            return response

        for path in ROUTES if chat else ():
            bp.add_url_rule(path, f"chat{path.replace('/', '_')}", chat_view, methods=["POST"])

        if page:
            page_body = render_page("legacy")
            bp.add_url_rule("/", "page", lambda: Response(page_body,
                                                          content_type=PAGE_CONTENT_TYPE))

        @bp.get("/v1/conversations/<conversation_id>")
        def conversation(conversation_id: str) -> Response:
            bridge = self._bridge()
            return _json(bridge.call(bridge.service.conversation, conversation_id,
                                     self._principal()))

        bp.add_url_rule(f"{STREAMS}/<stream_id>", "resume", self._resume, methods=["GET"])
        bp.add_url_rule(f"{STREAMS}/<stream_id>/cancel", "cancel", self._cancel,
                        methods=["POST"])

        @bp.get("/healthz")
        def healthz() -> Response:
            return _json({"status": "ok"})

        @bp.get("/readyz")
        def readyz() -> Response:
            lifecycle = self._bridge().service.lifecycle
            return _json({"ready": lifecycle.ready, "active_streams": lifecycle.active},
                         200 if lifecycle.ready else 503)

        @bp.get("/v1/limits")
        def limits() -> Response:
            bridge = self._bridge()
            return _json(bridge.call(bridge.service.limits,
                                     request.headers.get("X-Operator-Key")))

        @bp.get("/metrics")
        def metrics_endpoint() -> Response:
            return Response(render_metrics(), content_type=METRICS_CONTENT_TYPE)

        return bp


def read_body(limit: int) -> bytes:
    """The current request's body, or 413 once it passes ``limit`` (declared or read).

    An oversized body is read on and dropped up to ``drain_limit`` first, so that the
    413 reaches the client instead of a connection reset (issue 10). A body that cannot
    be read (malformed chunks, a client that left) is one info line and a 400.

    Raises:
        PayloadTooLarge: the body is over ``limit``.
        BadRequest: the body could not be read.
    """
    declared = request.content_length
    stream = request.stream
    try:
        if declared is not None and declared > limit:
            if declared <= drain_limit(limit):
                _drain(stream, drain_limit(limit))
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit "
                                  f"of {limit}")
        body = stream.read(limit + 1)
        if len(body) > limit:
            _drain(stream, drain_limit(limit) - len(body))
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    except (StreamBridgeError, HTTPException):  # ours, or werkzeug's 400/408 (read deadline)
        raise
    # gunicorn's chunk parser raises its own ParseException (not an OSError), a client
    # that left gives an OSError (gunicorn's NoMoreData): none is our bug.
    except Exception as e:
        log.info("request body of %s %s not read (%s: %s)", request.method, request.path,
                 type(e).__name__, e)
        raise BadRequest("the request body could not be read") from None
    return body


def _drain(stream: Any, budget: int) -> None:
    while budget > 0:
        data = stream.read(min(_READ, budget))
        if not data:
            return
        budget -= len(data)


def http_error(error: HTTPException) -> Response:
    """404/405 and friends as the contract's JSON errors."""
    status = error.code or 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    headers = {"Allow": ", ".join(error.valid_methods)} if getattr(
        error, "valid_methods", None) else {}
    return _json(error_body(code, http.HTTPStatus(status).phrase), status, headers)


def internal_error(error: Exception) -> Response:
    """Any unexpected exception: a JSON 500 without a stack trace."""
    return _json(error_body("internal_error", "internal server error"), 500)
