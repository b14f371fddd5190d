"""The Flask side: ``StreamBridge``, an extension that streams through the engine.

Add it to an existing Flask app and return ``bridge.stream(...)`` from a view, or
register ``bridge.blueprint()`` to serve the whole HTTP contract. Views run in
gunicorn's threads or greenlets; every stream runs on the worker's event loop
behind the seam (``_seam.py``). This module never imports Starlette.
"""

from __future__ import annotations

import http
import json
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Flask, Response, request
from werkzeug.exceptions import HTTPException

from async_core import AgentRegistry, Settings, StreamSession, parse_chat
from async_core import _metrics as metrics
from async_core._page import PAGE_CONTENT_TYPE, cors_headers, render_page
from async_core._records import FinishHook
from async_core.auth import Principal
from async_core.exceptions import StreamBridgeError
from async_core.protocol import ROUTES, ChatCall, Route, check_body_size

from ._bridge import Bridge


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
    """

    def __init__(self, app: Flask | None = None, *, settings: Settings | None = None,
                 registry: AgentRegistry | None = None,
                 hooks: tuple[FinishHook, ...] = ()) -> None:
        self.settings = settings or Settings.from_env()
        self.bridge = Bridge(self.settings, registry=registry, hooks=hooks)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the extension and its JSON error handler on ``app``."""
        app.extensions["streambridge"] = self
        app.register_error_handler(StreamBridgeError, error_response)

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
        data = dict(body if body is not None else request.get_json(force=True, silent=True)
                    or {})
        data["agent" if route == "native" else "model"] = agent
        return self.respond(self._parse(route, json.dumps(data).encode()))

    def respond(self, call: ChatCall) -> Response:
        """Admit ``call`` and answer it: a streamed body, or one JSON body."""
        bridge = self.bridge
        service = bridge.service
        session: StreamSession = bridge.call(service.open, call, self._principal())
        headers = service.headers(session)
        if not call.stream:
            events = bridge.call(bridge.collect, session)
            return _json(service.body(session, events), headers=headers)
        body = bridge.stream(session)
        # WSGI learns of a disconnect only at a failed write, and some servers never do
        # (a2wsgi#48). A server that does hears it offers this hook: body.close() then
        # stops the stream at once (the hybrid front, migration/hybrid.py).
        on_disconnect = request.environ.get("streambridge.on_disconnect")
        if on_disconnect is not None:
            on_disconnect(body.close)
        try:
            body.first()  # headers leave with the first frame, as on the async path
        except StreamBridgeError as error:  # failed before the first byte: plain HTTP
            kept = {k: v for k, v in headers.items()
                    if k.lower() not in ("cache-control", "x-accel-buffering")}
            return _json(error.body(), error.status, {**kept, **error.headers()})
        # direct_passthrough: the server iterates (and closes) the body itself, without
        # werkzeug's two wrapping generators per chunk; it yields bytes only.
        response = Response(body, headers=headers, content_type=service.content_type(session),
                            direct_passthrough=True)
        response.headers.pop("Content-Length", None)
        return response

    def _principal(self) -> Principal:
        # The same sans-IO check as the Starlette app (async_core.auth).
        return self.bridge.service.api_keys.authenticate(
            request.path, request.headers.get("Authorization"))

    def _parse(self, route: Route, body: bytes) -> ChatCall:
        s = self.settings
        return parse_chat(route, body, headers={k.lower(): v for k, v in request.headers.items()},
                          query=request.args, default_agent=s.default_agent,
                          max_body=s.max_body_bytes, max_messages=s.max_messages)

    def blueprint(self, name: str = "streambridge") -> Blueprint:
        """A blueprint serving the HTTP contract: chat routes, health, readiness, metrics."""
        bp = Blueprint(name, __name__)
        limit = self.settings.max_body_bytes

        def chat() -> Response:
            check_body_size(request.content_length, limit)
            body = request.stream.read(limit + 1)
            response = self.respond(self._parse(ROUTES[request.path], body))
            response.headers.update(cors_headers(request.headers.get("Origin")))
            return response

        for path in ROUTES:
            bp.add_url_rule(path, f"chat{path.replace('/', '_')}", chat, methods=["POST"])

        page_body = render_page("legacy")

        @bp.get("/")
        def page() -> Response:
            return Response(page_body, content_type=PAGE_CONTENT_TYPE)

        @bp.get("/v1/conversations/<conversation_id>")
        def conversation(conversation_id: str) -> Response:
            bridge = self.bridge
            return _json(bridge.call(bridge.service.conversation, conversation_id,
                                     self._principal()))

        @bp.get("/healthz")
        def healthz() -> Response:
            return _json({"status": "ok"})

        @bp.get("/readyz")
        def readyz() -> Response:
            lifecycle = self.bridge.service.lifecycle
            return _json({"ready": lifecycle.ready, "active_streams": lifecycle.active},
                         200 if lifecycle.ready else 503)

        @bp.get("/metrics")
        def metrics_endpoint() -> Response:
            return Response(metrics.render(), content_type=metrics.CONTENT_TYPE)

        return bp


def http_error(error: HTTPException) -> Response:
    """404/405 and friends as the contract's JSON errors."""
    status = error.code or 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    headers = {"Allow": ", ".join(error.valid_methods)} if getattr(
        error, "valid_methods", None) else {}
    return _json({"error": {"code": code, "message": http.HTTPStatus(status).phrase,
                            "type": code}}, status, headers)


def internal_error(error: Exception) -> Response:
    """Any unexpected exception: a JSON 500 without a stack trace."""
    return _json({"error": {"code": "internal_error", "message": "internal server error",
                            "type": "internal_error"}}, 500)
