"""The native ASGI server: the reference app over the stream service.

``create_app`` is the reference app: the contract's routes (``_routes``) plus the
engine's lifespan (``async_core.StreamEngine``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ._embed import StreamEngine
from ._records import FinishHook
from ._routes import contract_routes
from ._settings import PathName, Settings
from ._sources import SyncRunner
from .agents import AgentRegistry
from .wire import error_body

log = logging.getLogger("streambridge.app")


def create_app(settings: Settings | None = None, *, registry: AgentRegistry | None = None,
               sync_runner: SyncRunner | None = None, hooks: Sequence[FinishHook] = (),
               path: PathName = "async", drain_on_sigterm: bool = True) -> Starlette:
    """Build the native ASGI application serving the HTTP contract.

    To put the contract inside your own app, use ``StreamEngine`` instead: a
    mountable ``router()`` and a ``lifespan`` you compose with yours.

    Args:
        settings: configuration (default: ``Settings.from_env()``).
        registry: the agents (default: the built-in ``demo``).
        sync_runner: bridge for sync agents (``legacy_bridge.janus_runner()``).
        hooks: finish hooks called once per stream (persistence, webhooks).
        path: the ``X-Stream-Path`` and metrics label of this app.
        drain_on_sigterm: chain a SIGTERM handler that drains streams first.
    """
    engine = StreamEngine(settings, registry=registry, sync_runner=sync_runner, hooks=hooks,
                          path=path, drain_on_sigterm=drain_on_sigterm)
    app = Starlette(routes=contract_routes(engine.service, guard=engine.check_started),
                    lifespan=engine.lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _unexpected})
    app.state.service = engine.service
    app.state.engine = engine
    return app


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory``: the app configured from ``STREAMBRIDGE_*``."""
    return create_app(Settings.from_env())


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return JSONResponse(error_body(code, str(error.detail)), status_code=error.status_code,
                        headers=error.headers)


async def _unexpected(request: Request, error: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path,
                  exc_info=error)
    return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)
