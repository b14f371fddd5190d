"""An ordinary Flask app with its own routes and auth, and one streaming endpoint.

- ``GET /api/me``: a plain JSON route behind the app's header auth.
- ``POST /chat``: ``{"prompt": str, "thread"?: str, "stream"?: bool}`` streams the
  ``assistant`` agent (``agents.py``) for the signed-in user. It is declared once,
  through ``StreamBridge``; gunicorn serves it on the legacy path and the hybrid
  front serves the same declaration natively when the migration flag says async.
- ``GET /api/boom``: a view that fails, to show the app's own 500 handler.
- ``/healthz``, ``/readyz``, ``/metrics``: streambridge's blueprint (no chat routes,
  no demo page).

Auth: ``X-User-Token: <token>``; the tokens are in ``TOKENS`` (a real app would look
them up in its database).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, abort, g, jsonify, request
from werkzeug.exceptions import HTTPException

from async_core.exceptions import BadRequest
from legacy_bridge import StreamBridge

from .agents import registry

TOKENS = {"alice-token": "alice", "bob-token": "bob"}


def create_app() -> Flask:
    """Build the app (settings from ``STREAMBRIDGE_*`` variables)."""
    app = Flask(__name__)
    bridge = StreamBridge(app, registry=registry())
    app.register_blueprint(bridge.blueprint(chat=False, page=False))

    @app.before_request
    def authenticate() -> None:
        g.user = TOKENS.get(request.headers.get("X-User-Token", ""))

    @app.get("/api/me")
    def me() -> Any:
        if g.user is None:
            abort(401)
        return {"user": g.user}

    @bridge.streaming("/chat", agent="assistant")
    def chat(body: dict[str, Any]) -> dict[str, Any]:
        if g.user is None:
            abort(401)  # refused on every path: this runs before any stream starts
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest("prompt must be a non-empty string")  # the contract's 400 JSON
        if prompt == "boom":
            raise RuntimeError("a bug in the app's own code")  # the app's 500 below
        agent_request: dict[str, Any] = {"message": prompt, "options": {}}
        if "thread" in body:
            agent_request["conversation_id"] = body["thread"]
        if "stream" in body:
            agent_request["stream"] = body["stream"]
        return agent_request

    @app.get("/api/boom")
    def boom() -> Any:
        raise RuntimeError("a bug in the app's own code")

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        return jsonify(problem=error.name, user=g.get("user")), error.code

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Any:
        if isinstance(error, HTTPException):
            return http_error(error)
        app.logger.exception("unexpected error")
        return jsonify(problem="something broke on our side"), 500

    return app
