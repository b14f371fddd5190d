"""The reference Flask app: the whole HTTP contract on the legacy path.

Run it with gunicorn: ``gunicorn -c python:legacy_bridge.gunicorn_conf
'legacy_bridge.app:create_app()'`` (or ``streambridge serve --path legacy``).
"""

from __future__ import annotations

import logging

from flask import Flask
from werkzeug.exceptions import HTTPException

from async_core import Settings

from ._flask import StreamBridge, http_error, internal_error

log = logging.getLogger("streambridge.app")


def create_app(settings: Settings | None = None) -> Flask:
    """Build the reference Flask app (settings from ``STREAMBRIDGE_*`` by default)."""
    app = Flask("streambridge")
    bridge = StreamBridge(app, settings=settings)
    app.register_blueprint(bridge.blueprint())
    app.register_error_handler(HTTPException, http_error)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> object:
        if isinstance(error, HTTPException):
            return http_error(error)
        log.exception("unexpected error", exc_info=error)
        return internal_error(error)

    return app
