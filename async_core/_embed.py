"""The engine inside your own Starlette or FastAPI app.

``StreamEngine`` is the one object a user's app holds::

    engine = StreamEngine(registry=agents, sync_runner=legacy_bridge.janus_runner())
    app = FastAPI(lifespan=engine.lifespan)      # or compose it with your own
    app.mount("/llm", engine.router())          # the contract routes, under a prefix

    @app.post("/chat")
    async def chat(request: Request) -> Response:
        return await engine.respond(request, agent="support")

The lifespan opens the store (transcripts, webhook outbox) on the server's loop,
chains the SIGTERM drain and, at shutdown, flushes the last transcripts. A
request that arrives while it is not running gets a 503 that says so, rather
than a stream whose transcript is silently not stored.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Router

from ._lifecycle import install_sigterm_drain
from ._records import FinishHook
from ._routes import chat_response, contract_routes, error_response
from ._settings import PathName, Settings
from ._sources import SyncRunner
from .agents import AgentRegistry
from .exceptions import NotStarted, StreamBridgeError
from .protocol import ROUTES, Route
from .service import StreamService

log = logging.getLogger("streambridge.embed")


class StreamEngine:
    """The streaming engine for one ASGI app: its routes, its lifespan, its streams.

    Args:
        settings: configuration (default: ``Settings.from_env()``).
        registry: the agents (default: the built-in ones plus ``STREAMBRIDGE_AGENTS``).
        sync_runner: runs sync agents (``legacy_bridge.janus_runner()``); without
            one, only async agents can stream.
        hooks: extra finish hooks, called once per stream.
        path: the ``X-Stream-Path`` and metrics label of these streams.
        drain_on_sigterm: chain a SIGTERM handler that drains streams first.
    """

    def __init__(self, settings: Settings | None = None, *,
                 registry: AgentRegistry | None = None,
                 sync_runner: SyncRunner | None = None, hooks: Sequence[FinishHook] = (),
                 path: PathName = "async", drain_on_sigterm: bool = True) -> None:
        self.settings = settings or Settings.from_env()
        self.service = StreamService(self.settings, path=path, registry=registry,
                                     sync_runner=sync_runner, hooks=hooks)
        self._drain_on_sigterm = drain_on_sigterm
        self._running = False

    @property
    def running(self) -> bool:
        """True between the lifespan's start-up and its shutdown."""
        return self._running

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """The engine's lifespan: pass it as ``lifespan=`` or enter it inside yours.

        Args:
            app: the ASGI app (unused; the signature FastAPI and Starlette call).

        Raises:
            StreamBridgeError: bad database or webhook configuration.
        """
        if self._drain_on_sigterm:
            install_sigterm_drain(self.service.lifecycle)
        await self.service.start()  # the store's engine belongs to this (the server's) loop
        self._running = True
        try:
            yield
        finally:
            self._running = False
            await self.service.aclose()  # after the drain: flushes every final transcript

    def router(self) -> Router:
        """The HTTP contract's routes as a Starlette ``Router``: mount it anywhere.

        ``app.mount("/llm", engine.router())`` serves ``/llm/v1/chat``,
        ``/llm/v1/chat/completions``, ``/llm/v1/conversations/{id}``, ``/llm/metrics``...
        The router has no lifespan of its own: run ``engine.lifespan`` in your app's.
        """
        return Router(routes=contract_routes(self.service, guard=self.check_started))

    def check_started(self) -> None:
        """Refuse a stream while the lifespan is not running (nothing would be stored).

        Raises:
            NotStarted: the app was built without ``engine.lifespan`` (503).
        """
        if not self._running:
            log.error("a stream was requested while the streambridge lifespan is not "
                      "running: pass lifespan=engine.lifespan to your app")
            raise NotStarted("the streaming engine is not started: run engine.lifespan "
                             "in your app's lifespan (FastAPI(lifespan=...))")

    async def respond(self, request: Request, *, agent: str | None = None,
                      body: Mapping[str, Any] | None = None, route: Route = "native"
                      ) -> Response:
        """Answer ``request`` from your own route with a stream (or one JSON body).

        Args:
            request: the incoming request (its headers pick the wire format and
                carry the API key; its disconnect stops the agent).
            agent: the agent to run when the body names none.
            body: the chat request (``messages``/``message``, ``options``,
                ``conversation_id``, ``stream``) built from your own request; by
                default the request's body is read as the native ``/v1/chat`` one.
            route: the API shape of ``body`` (``native``, ``openai``,
                ``ollama-chat``, ``ollama-generate``).

        Returns:
            The streaming response, or the contract's JSON error (4xx/5xx) when the
            request is refused before the first byte.
        """
        try:
            self.check_started()
            raw = None if body is None else json.dumps(dict(body)).encode()
            auth_path = next(p for p, r in ROUTES.items() if r == route)
            return await chat_response(self.service, request, route, auth_path,
                                       body=raw, agent=agent)
        except StreamBridgeError as error:
            return error_response(error, request.headers)

    def error(self, error: StreamBridgeError, request: Request) -> JSONResponse:
        """The contract's JSON response for ``error`` (for your own validation)."""
        response = error_response(error, request.headers)
        assert isinstance(response, JSONResponse)
        return response
