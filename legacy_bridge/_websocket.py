"""``GET /v1/ws`` on the legacy path: simple-websocket takes the socket over in the view.

The view (the request's thread or greenlet) accepts the socket with simple-websocket
(the library under flask-sock), starts async_core's ``WebSocketSession`` on the
bridge's loop over a ``LoopEnd``, and relays between the two until either ends: see
the design block of ``_ws_link.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from flask import Response, request
from simple_websocket import ConnectionClosed, Server
from werkzeug.exceptions import NotFound

from async_core import WebSocketSession
from async_core.exceptions import BadRequest
from async_core.ws_protocol import CLOSE_WAIT, MAX_FRAME, PING_INTERVAL

from ._bridge import Bridge
from ._ws_link import LoopEnd, SocketLink, serve_session, shutdown_fd
from ._ws_writer import SocketWriter

# permessage-deflate is declined (simple-websocket would accept it whenever offered):
# its zlib state cost ~105 KiB per socket and compression dominated the CPU per token,
# and the loop writes its frames itself, uncompressed (ws_protocol.text_frame)
_EXTENSIONS = "HTTP_SEC_WEBSOCKET_EXTENSIONS"


class _Conn:
    """The connection as simple-websocket uses it: each send whole, through the link's
    writer (one writer at a time with the loop's frames), and its close only a shutdown
    (gunicorn closes the descriptor after the view returned)."""

    def __init__(self, sock: Any, writer: SocketWriter) -> None:
        self._sock, self._writer = sock, writer

    def send(self, data: bytes) -> int:
        self._writer.write(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        return bytes(self._sock.recv(size))

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def close(self) -> None:
        shutdown_fd(self.fileno())


class _PokingEvent:
    """simple-websocket's event (``event_class``): setting it also pokes the link."""

    def __init__(self, poke: Callable[[], None]) -> None:
        self._event, self._poke = threading.Event(), poke

    def set(self) -> None:
        self._event.set()
        self._poke()

    def clear(self) -> None:
        self._event.clear()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


class _Reader(threading.Thread):
    """simple-websocket's reader (``thread_class``): its end pokes the link."""

    def __init__(self, target: Callable[[], None], poke: Callable[[], None]) -> None:
        super().__init__(target=target, name="streambridge-ws-reader", daemon=True)
        self._poke = poke

    def run(self) -> None:
        try:
            super().run()
        finally:
            self._poke()


def _received(ws: Server) -> tuple[list[Mapping[str, Any]], bool]:
    """The messages the reader holds, and whether the client left."""
    out: list[Mapping[str, Any]] = []
    try:
        while (data := ws.receive(timeout=0)) is not None:
            key = "text" if isinstance(data, str) else "bytes"
            out.append({"type": "websocket.receive", key: data})
    except ConnectionClosed:
        return out, True
    return out, False


def serve_socket(bridge: Bridge, environ: dict[str, Any]) -> str:
    """Serve one WebSocket in the calling view until it ends; return the server mode.

    Raises:
        BadRequest: the server gives no socket, or the handshake failed.
    """
    key = next((k for k in ("gunicorn.socket", "werkzeug.socket") if k in environ), None)
    if key is None:
        raise BadRequest("this server cannot hand over the connection for a WebSocket")
    bridge.start()
    link = SocketLink(bridge.glue, environ[key])
    conn = _Conn(environ[key], link.writer)
    offer = {k: v for k, v in environ.items() if k != _EXTENSIONS}
    try:
        ws = Server({**offer, key: conn}, ping_interval=PING_INTERVAL,
                    max_message_size=MAX_FRAME, event_class=lambda: _PokingEvent(link.poke),
                    thread_class=lambda target: _Reader(target, link.poke))
    except Exception as error:  # simple-websocket's ConnectionError and wsproto's
        link.stop(release=True)
        raise BadRequest(f"the WebSocket handshake failed: {error}") from None
    auth = environ.get("HTTP_AUTHORIZATION")
    end = LoopEnd(link, {"authorization": auth} if auth is not None else {})
    left = False

    def deliver(messages: list[Mapping[str, Any]], gone: bool) -> None:
        bridge.on_loop(end.deliver, messages, gone)

    try:
        bridge.run_task(lambda: serve_session(WebSocketSession(end, bridge.service), link))
        left = _relay(ws, link, deliver)
    finally:
        link.stop()
        if not left:
            deliver([], True)
        _close(ws, conn)
        link.stop(release=True)
    return str(ws.mode)


def _relay(ws: Server, link: SocketLink,
           deliver: Callable[[list[Mapping[str, Any]], bool], None]) -> bool:
    """Write what the session sends and pass on what the client sends, until either ends;
    True when the client left (and the session was told)."""
    while True:
        close, over = link.take()
        received, left = _received(ws)
        if received or left:
            deliver(received, left)
        if left:
            return True
        try:
            link.writer.flush()  # what the loop could not write without blocking
            if close is not None:
                ws.close(close.code, close.reason)
                return False
        except (ConnectionClosed, OSError):
            return False
        if over:
            return False


def _close(ws: Server, conn: _Conn) -> None:
    """Close (1000) unless closed already, and let the reader end: the client's close
    frame ends it, or after ``CLOSE_WAIT`` the connection is shut down."""
    if ws.connected:
        try:
            ws.close()
        except (ConnectionClosed, OSError):
            pass
    ws.thread.join(CLOSE_WAIT)
    if ws.thread.is_alive():
        conn.close()
        ws.thread.join(CLOSE_WAIT)


class _Served(Response):
    """The view's answer after a WebSocket: nothing more to send on the connection."""

    mode = "gunicorn"

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if self.mode == "gunicorn":
            raise StopIteration  # gunicorn's way to close a connection without a response
        return super().__call__(environ, start_response)


def websocket_view(bridge: Callable[[], Bridge]) -> Callable[[], Response]:
    """The Flask view of ``GET /v1/ws`` (a ``websocket=True`` rule) streaming through
    ``bridge()`` (looked up per request: ``serve_through`` may swap it)."""

    def view() -> Response:
        served = _Served()
        served.mode = serve_socket(bridge(), request.environ)
        return served

    return view


def not_a_websocket() -> Response:
    """``GET /v1/ws`` without the upgrade: the 404 of an unknown route."""
    raise NotFound()
