# design: the hybrid front; one ASGI app, two branches, one event loop per worker process.
# - Routing: POST on a chat route (async_core.protocol.ROUTES) reads the request body
#   (bounded by max_body_bytes), asks the flag (flags.decide) and replays the body into
#   the chosen branch: "async" is async_core's Starlette app, served natively; "legacy" is
#   the Flask app run by our WSGI adapter (_hybrid_wsgi.WSGIBranch, which replaced a2wsgi):
#   the reference app, or the user's own
#   (--app / STREAMBRIDGE_APP), whose contract routes count only if it registered the
#   blueprint. Everything else (health, readiness, metrics, the page, the user's own
#   routes) goes to Flask untouched. A chat request with no
#   conversation id gets one here (X-Conversation-Id), so its later turns land in the same
#   bucket. The decision shows in X-Stream-Path (set by each branch's service; the front
#   adds it to pre-stream errors), in one log line and in the metrics' path label.
#   GET /v1/streams/{id} and POST /v1/streams/{id}/cancel (where the app has the
#   blueprint) are served by the native app: both branches write one stream log
#   (the shared service's), so either branch's streams are resumed and cancelled there.
# - Declared endpoints (legacy_bridge StreamBridge.endpoint): every request goes to Flask
#   first, so the user's auth and to_request run once, in their request context, on both
#   branches. The view then calls the route hook (ROUTE_HOOK in the environ) with the
#   agent's request; the flag decides there. legacy: the view streams through the seam
#   as any Flask-branch stream. async: a Handoff keeps the agent's request, the view's
#   placeholder is dropped, the WSGI thread is released and the native app serves the
#   request as a native POST /v1/chat (same admission, disconnects, drain, metrics).
# - One loop: gunicorn's uvicorn worker already runs a loop, so the legacy branch does not
#   start a Bridge's loop thread: the front builds a Bridge on this loop
#   (Bridge.on_running_loop) and hands it to the Flask extension in each request's environ
#   (LOOP_BRIDGE); the extension's own bridge is never started. The request's body is
#   read on the loop before a WSGI thread is taken (a slow sender holds none; the view's
#   reads are in memory). A Flask view (in a WSGI thread) blocks on bridge.call() while
#   the loop opens the session, and reads the first frame through the Bridge's janus
#   queue (headers leave with it, as in production legacy). The janus queue is created
#   in the WSGI thread, and janus binds its async side to the loop of its first async
#   use: the pump task, on this loop (test_hybrid pins it). When the view returns a
#   stream body (legacy_bridge.WSGIBody), the adapter hands it back with the headers in
#   one hop the thread does not wait for: the thread is free, and
#   _hybrid_body.write_body sends the frames (the first included) from the loop (the
#   queue's async side), so a chunk never crosses to a thread and back.
#   The legacy branch's service shares the native one's parts (StreamService(shares=...)):
#   one Lifecycle, Admission, store, log and key limits (asyncio semaphores can only be
#   shared on one loop): max_streams, the rate limit, readiness and the drain are per
#   process, whichever branch serves; its own are the label, the agents' flagged form
#   and the path's default form. Sync agents of both run on one bounded ThreadGlue.
# - Disconnects: a WSGI app never reads receive() after the body, so it never sees the
#   client leave (a2wsgi#48) and uvicorn drops writes silently (uvicorn#2276): the WSGI thread
#   would pump heartbeats to nobody forever. The front owns receive() for Flask-branch
#   requests: a watcher task awaits http.disconnect once the body was read, and calls the
#   callbacks registered through environ["streambridge.on_disconnect"]; the Flask extension
#   registers its WSGIBody.close, which shuts the frame queue (the loop writer's get()
#   returns, the response ends) and aborts the session on the loop: the agent stops
#   within milliseconds, as on the async branch. A write stuck in flow control for the
#   send timeout ends the stream as send_timeout (the writer's timer; the pump's is
#   for a full queue) and the connection is closed.
# - Threads: the WSGI pool (a2wsgi's was 10 by default, and silently queueing) is sized to
#   the stream and buffered slots plus 16, so admission refuses streams first; a request
#   whose body is in and finds every thread busy waits up to admission_timeout for one,
#   then gets 503 and a log line. A stream holds its thread only until its first frame; a
#   buffered answer, to its end. The front never queues work in the pool (the semaphore),
#   and the lifespan shutdown lets its idle threads end.
# - Shutdown: SIGTERM drains the shared lifecycle (both branches' streams end in-band with
#   error "shutdown") before uvicorn's own handler runs; uvicorn-worker does not pass
#   gunicorn's graceful timeout to uvicorn (uvicorn#2094), so HybridWorker sets
#   timeout_graceful_shutdown itself, inside gunicorn's graceful_timeout.
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from flask import Flask
from prometheus_client import Counter
from starlette.responses import JSONResponse

from async_core import Settings, StreamService, install_sigterm_drain
from async_core import create_app as create_async_app
from async_core.exceptions import BadRequest, Overloaded, PayloadTooLarge
from async_core.protocol import ROUTES, drain_limit, load_body, new_id
from legacy_bridge import (
    FIRST_ON_LOOP,
    LOOP_BRIDGE,
    ROUTE_HOOK,
    Bridge,
    JanusRunner,
    StreamBridge,
    ThreadGlue,
)
from legacy_bridge.app import create_app as create_flask_app

from ._flagfile import FlagSettings, FlagStore
from ._hybrid_body import write_stream
from ._hybrid_branches import (
    ON_DISCONNECT,
    FlaggedRegistry,
    Handoff,
    run_lifespan,
    with_path_header,
    wsgi_threads,
)
from ._hybrid_serve import FrontSettings, load_app
from ._hybrid_worker import HybridWorker  # noqa: F401 - the name the gunicorn conf gives
from ._hybrid_wsgi import WSGIBranch
from ._watch import DisconnectWatch, replay
from .flags import Decision, RouteRequest, decide

log = logging.getLogger("streambridge.hybrid")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_NATIVE = next(path for path, route in ROUTES.items() if route == "native")
_STREAMS = "/v1/streams/"
# The label (and the log line's key) keep the older name "impl" for the agent form:
# dashboards and log queries already read them (a renamed label is a new series).
DECISIONS = Counter("streambridge_flag_decisions_total",
                    "Chat requests routed by the migration flag.", ["path", "impl", "reason"])


class HybridFront:
    """The ASGI app of ``streambridge serve --path hybrid``.

    Args:
        settings: configuration (default: ``Settings.from_env()``).
        flags: the flag store (default: ``$STREAMBRIDGE_FLAGS_FILE`` over the environment).
        threads: WSGI threads of the Flask branch (0: ``wsgi_threads``' default; None:
            ``$STREAMBRIDGE_HYBRID_THREADS``).
        app: the user's Flask app, with a ``StreamBridge`` (default: the reference app).

    Raises:
        ValueError: ``app`` has no ``StreamBridge`` extension.
    """

    def __init__(self, settings: Settings | None = None, *, flags: FlagStore | None = None,
                 threads: int | None = None, app: Flask | None = None) -> None:
        self.settings = s = settings or Settings.from_env()
        self.flags = flags or FlagStore(FlagSettings.from_env().flags_file)
        self.flask_app = app if app is not None else create_flask_app(s)
        ext = self.flask_app.extensions.get("streambridge")
        if not isinstance(ext, StreamBridge):
            raise ValueError(f"Flask app {self.flask_app.name!r} has no StreamBridge: "
                             "add legacy_bridge.StreamBridge(app)")
        registry = ext.registry
        # The built-in chat routes go through the flag only where the app serves them.
        self.contract = frozenset(r.rule for r in self.flask_app.url_map.iter_rules()
                                  if r.rule in ROUTES)
        # Resume and cancel read the one log both branches write: served natively
        # where the app serves them (the blueprint), whichever branch ran the stream.
        self.streams = any(r.rule.startswith(_STREAMS) for r in self.flask_app.url_map.iter_rules())
        self.glue = ThreadGlue((s.max_streams or 1024) + s.max_buffered)
        self._runner = JanusRunner(self.glue)
        self.async_app = create_async_app(
            s, registry=FlaggedRegistry(registry, self.flags, "async"),
            sync_runner=self._runner, path="async", drain_on_sigterm=False)
        native: StreamService = self.async_app.state.service
        # The Flask branch: its own label and flagged agents, the native branch's parts.
        self.legacy_service = StreamService(
            s, path="legacy", registry=FlaggedRegistry(registry, self.flags, "legacy"),
            sync_runner=self._runner, form="sync", shares=native)
        self.bridge: Bridge | None = None  # on the server's loop, from the lifespan start-up
        self.lifecycle = native.lifecycle
        if threads is None:
            threads = FrontSettings.from_env().hybrid_threads
        self.threads = wsgi_threads(s, threads)
        # room: chunks of a response queued between the WSGI thread and uvicorn (each a
        # join of up to 16 frames); a2wsgi's default of 10 held ~30 MB for a stalled
        # reader. Two (one being sent, one waiting) keep backpressure as tight as gthread's.
        self.wsgi = WSGIBranch(self.flask_app.wsgi_app, threads=self.threads,
                               max_body=s.max_body_bytes, room=2)
        # Counted here, not by the executor, which would queue the excess silently.
        self._threads_free = asyncio.Semaphore(self.threads)
        self._shutdown_native: Callable[[], Awaitable[None]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif (scope["type"] == "http" and scope["method"] == "POST"
              and scope["path"] in self.contract):
            await self._chat(scope, receive, send)
        elif scope["type"] == "http" and self.streams and scope["path"].startswith(_STREAMS):
            await self.async_app(scope, receive, send)
        elif scope["type"] == "websocket":  # /v1/ws is served natively, whatever the flags
            await self.async_app(scope, receive, send)
        elif scope["type"] == "http":
            await self._legacy(scope, receive, send, [])

    # -- chat routes: decide, then serve ------------------------------------------

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        messages, body = await self._read_body(receive)
        if body is None:  # over max_body_bytes: 413 here, whichever branch (issue 10)
            error = PayloadTooLarge("request body exceeds the limit of "
                                    f"{self.settings.max_body_bytes} bytes")
            await JSONResponse(error.body(), error.status, {"Connection": "close"})(
                scope, receive, send)
            return
        decision, conversation_id = self._decide(scope, body)
        headers = list(scope["headers"])
        if conversation_id:
            headers.append((b"x-conversation-id", conversation_id.encode()))
        scope = {**scope, "headers": headers}
        send = _with_path_header(send, decision.path)
        if decision.path == "async":
            await self.async_app(scope, replay(messages, receive), send)
        else:
            await self._legacy(scope, receive, send, messages)

    async def _read_body(self, receive: Receive
                         ) -> tuple[list[dict[str, Any]], bytes | None]:
        """The body's messages and bytes; None: over the limit (read on up to
        ``drain_limit`` and dropped, so that the 413 is not lost to a reset)."""
        messages, size, limit = [], 0, self.settings.max_body_bytes
        while True:
            message = await receive()
            if message["type"] != "http.request":
                messages.append(message)
                return messages, b""  # the client left already; the branch sees it too
            size += len(message.get("body", b""))
            if size > limit:
                if not message.get("more_body", False) or size > drain_limit(limit):
                    return [], None
                continue
            messages.append(message)
            if not message.get("more_body", False):
                break
        return messages, b"".join(m.get("body", b"") for m in messages)

    def _decide(self, scope: Scope, body: bytes) -> tuple[Decision, str]:
        """Return the decision and the conversation id to add (empty: keep the client's)."""
        heads = {k.decode("latin1").lower(): v.decode("latin1") for k, v in scope["headers"]}
        try:  # the branches' own parser: what it refuses decides nothing (a lone
            data = load_body(body)  # surrogate in an id broke the bucket hash: issue 10)
        except BadRequest:
            data = None
        data = data if isinstance(data, dict) else {}
        route = ROUTES[scope["path"]]
        agent = data.get("agent" if route == "native" else "model")
        if route == "native" and agent is None:
            agent = self.settings.default_agent
        conversation = data.get("conversation_id") or heads.get("x-conversation-id") or ""
        added = ""
        if data and not conversation:
            conversation = added = new_id()
        return self._route(scope["path"], heads, agent, conversation), added

    def _route(self, path: str, heads: dict[str, str], agent: object,
               conversation: object) -> Decision:
        """Ask the flag (pure), count and log the decision. Any thread."""
        config = self.flags.current()
        decision = decide(config, RouteRequest(
            agent=agent if isinstance(agent, str) else "",
            conversation_id=conversation if isinstance(conversation, str) else "",
            tenant=heads.get(config.tenant_header, ""),
            override=heads.get("x-stream-path-override", ""),
            presented_key=heads.get("x-operator-key", ""), endpoint=path))
        DECISIONS.labels(decision.path, decision.form, decision.reason).inc()
        log.info("flag: %s agent=%s conversation=%s bucket=%s -> path=%s impl=%s (%s%s)",
                 path, agent, conversation, decision.bucket, decision.path,
                 decision.form, decision.reason,
                 ", override refused" if decision.override_refused else "")
        return decision

    def _route_hook(self, scope: Scope, handoff: Handoff) -> Callable[[str, dict[str, Any]], bool]:
        """The hook a declared endpoint's view calls (``legacy_bridge.ROUTE_HOOK``)."""

        def route(agent: str, body: dict[str, Any]) -> bool:
            heads = {k.decode("latin1").lower(): v.decode("latin1")
                     for k, v in scope["headers"]}
            conversation = body.get("conversation_id") or heads.get("x-conversation-id")
            if not conversation:  # one id for this turn and the next: a sticky bucket
                conversation = body["conversation_id"] = new_id()
            handoff.path = self._route(scope["path"], heads, agent, conversation).path
            if handoff.path == "legacy":
                return False
            handoff.take(body)
            return True

        return route

    # -- the Flask branch ---------------------------------------------------------

    async def _legacy(self, scope: Scope, receive: Receive, send: Send,
                      messages: list[dict[str, Any]]) -> None:
        watch = DisconnectWatch(receive, messages)
        # The body first, on the loop: a slow client holds no WSGI thread while it sends.
        body = await self.wsgi.read_body(watch.receive)
        if body is None or not await self._take_thread():
            await watch.aclose()
            if body is not None:
                log.warning("all %d WSGI threads are busy: 503 for %s", self.threads,
                            scope["path"])
                error = Overloaded(f"all {self.threads} WSGI threads of this worker are busy",
                                   retry_after=max(1.0, self.settings.admission_timeout))
                await JSONResponse(error.body(), error.status, error.headers())(
                    scope, receive, send)
            return
        handoff = Handoff()
        hooks = {LOOP_BRIDGE: self.bridge, ON_DISCONNECT: watch.on_disconnect,
                 ROUTE_HOOK: self._route_hook(scope, handoff), FIRST_ON_LOOP: True}
        stream, flask_send = None, handoff.send(send)
        try:
            try:
                stream = await self.wsgi(scope, body, flask_send, hooks)
            finally:
                self._threads_free.release()
            if stream is not None:  # the view streams: written from the loop, first frame on
                await write_stream(*stream, flask_send)
        finally:
            if stream is not None:
                stream[1].close()  # a no-op once written; else the stream ends here
            await watch.aclose()
        if handoff.body is not None and not watch.disconnected:
            await self._native(scope, receive, handoff.native_send(send), handoff.body)

    async def _native(self, scope: Scope, receive: Receive, send: Send,
                      agent_body: dict[str, Any]) -> None:
        """Serve a declared endpoint's agent request natively, as ``POST /v1/chat``."""
        body = json.dumps(agent_body).encode()
        headers = [(k, v) for k, v in scope["headers"]
                   if k.lower() not in (b"content-length", b"content-type", b"transfer-encoding")]
        headers += [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())]
        native = {**scope, "path": _NATIVE, "raw_path": _NATIVE.encode(), "headers": headers}
        message = {"type": "http.request", "body": body, "more_body": False}
        await self.async_app(native, replay([message], receive),
                             _with_path_header(send, "async"))

    async def _take_thread(self) -> bool:
        """Wait (like admission: up to admission_timeout) for a WSGI thread; False: none."""
        free, timeout = self._threads_free, self.settings.admission_timeout
        if free.locked() and timeout <= 0:
            return False
        try:
            async with asyncio.timeout(timeout if timeout > 0 else None):
                await free.acquire()
        except TimeoutError:
            return False
        return True

    # -- lifespan -----------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        try:
            self._shutdown_native = await run_lifespan(self.async_app)  # opens the store
            self.bridge = Bridge.on_running_loop(self.legacy_service, self.glue)
            install_sigterm_drain(self.lifecycle)
        except Exception as e:
            log.exception("hybrid front start-up failed")
            await send({"type": "lifespan.startup.failed", "message": str(e)})
            return
        log.info("hybrid front ready: flags %s, %d WSGI threads", self.flags.path or "(env)",
                 self.threads)
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        grace = self.settings.policy.send_timeout or 5.0
        if self.bridge is not None and not await self.bridge.aclose(grace):
            log.warning("sync agents still running at shutdown")
        if self._shutdown_native is not None:
            await self._shutdown_native()
        self.wsgi.close()
        await send({"type": "lifespan.shutdown.complete"})


def _with_path_header(send: Send, path: str) -> Send:
    """Add X-Stream-Path to a response that lacks it (errors before the stream)."""

    async def wrapped(message: dict[str, Any]) -> None:
        await send(with_path_header(message, path))

    return wrapped


def create_app(app: str | None = None) -> HybridFront:
    """Factory for gunicorn/uvicorn: the hybrid front configured from the environment.

    Args:
        app: the user's Flask app as ``module:attribute`` (or ``module:factory()``);
            default ``$STREAMBRIDGE_APP``, else the reference app.
    """
    front = FrontSettings.from_env()  # parsed once, here
    spec = app or front.app
    return HybridFront(app=load_app(spec) if spec else None, threads=front.hybrid_threads)
