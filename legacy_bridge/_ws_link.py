# design: GET /v1/ws on the legacy path: a gunicorn socket, served by the engine's loop.
#   This module: the link between the loop and the view; _websocket.py: simple-websocket
#   and the Flask view.
# - Who does what: simple-websocket (the library under flask-sock) does the handshake in
#   the request's thread or greenlet (the *view*) and reads frames in its own *reader*
#   (a thread under gthread, a greenlet under gevent; it answers pings, sends ours every
#   PING_INTERVAL, closes 1009 past MAX_FRAME). The session itself (auth, streams,
#   cancel, heartbeats, the 1013 policy) is async_core's WebSocketSession, run as a task
#   on the bridge's loop over a LoopEnd: the same code as on the async path, opening
#   and following streams with the same StreamService the SSE routes use.
# - One SocketLink per socket between the worlds (a native lock and a HybridCondition):
#     loop -> socket: send_text appends to the outbox; past WINDOW texts the session
#       waits for the view to take them (its own send queue then applies the 1013
#       policy). The view takes the whole outbox per pass and writes it (sendall).
#     socket -> loop: the reader's event (simple-websocket's event_class) and its end
#       (thread_class) poke the link; the view hands what was received to the loop.
#   The view blocks in one place (the link's condition) or in a write; nobody blocks
#   while holding the lock.
# - Ends: a client that leaves is a disconnect on the session's receive(); the session
#   then ends its streams as an HTTP response whose client left. A session that ends
#   (closed 1008/1013, or the bridge stopping: 1001) tells the view, which writes what
#   is left and the close frame, waits up to CLOSE_WAIT for the client's close, and
#   returns; gunicorn closes the connection. A view stuck in a write to a client that
#   reads nothing is freed by the loop CLOSE_WAIT after the session ended (shutdown).
# - Cost per open socket: gthread, the view's thread (one of the worker's --threads)
#   and the reader's; gevent, two greenlets (measured in README, WebSocket section).
from __future__ import annotations

import _socket
import asyncio
from collections.abc import Mapping
from typing import Any

from async_core import WebSocketSession
from async_core.ws_protocol import CLOSE_WAIT

from ._doorbell import resolve_soon
from ._glue import HybridCondition, ThreadGlue

WINDOW = 16  # texts handed to the view and not yet written: the socket's write buffer
CLOSE_GOING_AWAY = 1001  # the worker is stopping


class Close:
    """A close frame for the view to write after what it holds."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str | None) -> None:
        self.code, self.reason = code, reason


def shutdown_fd(fd: int) -> None:
    """Shut the connection down through a native duplicate of ``fd`` (any thread may:
    gevent's own socket methods belong to the hub's thread)."""
    try:
        dup = _socket.socket(fileno=_socket.dup(fd))
    except OSError:
        return
    try:
        dup.shutdown(_socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        dup.close()


class SocketLink:
    """What the loop and the view share for one socket (see the design block)."""

    def __init__(self, glue: ThreadGlue, fd: int) -> None:
        self._lock = glue.allocate_lock()
        self._cond = HybridCondition(self._lock, glue)
        self._outbox: list[str | Close] = []
        self._poked = self._over = False
        self._room: asyncio.Future[None] | None = None  # the session waits for the view
        self._fd: int | None = fd  # the connection, until the view hands it back
        self.gone = False  # the view writes no more (the client left, or it closed)

    # -- the loop's side ----------------------------------------------------------

    async def send(self, text: str) -> None:
        """Hand ``text`` to the view; past ``WINDOW`` waiting ones, wait for room.

        Raises:
            ConnectionResetError: the view writes no more (the client left).
        """
        fut = None
        with self._lock:
            if self.gone:
                raise ConnectionResetError("the client left")
            self._outbox.append(text)
            self._cond.notify()
            if len(self._outbox) >= WINDOW:
                fut = self._room = asyncio.get_running_loop().create_future()
        if fut is not None:
            await fut

    def post_close(self, code: int, reason: str | None) -> None:
        """Have the view write a close frame after what it holds (no-op once gone)."""
        with self._lock:
            if not self.gone:
                self._outbox.append(Close(code, reason))
                self._cond.notify()

    def end(self) -> None:
        """The session is over: the view writes what is left and returns."""
        with self._lock:
            self._over = True
            self._cond.notify()

    def force_close(self) -> None:
        """Free a view stuck writing to a client that reads nothing (loop timer)."""
        with self._lock:
            if self._fd is not None:
                shutdown_fd(self._fd)  # a syscall, it does not block

    # -- the view's side ----------------------------------------------------------

    def poke(self) -> None:
        """The reader received something, or ended (its thread or greenlet)."""
        with self._lock:
            self._poked = True
            self._cond.notify()

    def take(self) -> tuple[list[str | Close], bool]:
        """Block until there is work: (texts to write, whether the session is over)."""
        with self._lock:
            while not (self._outbox or self._poked or self._over):
                self._cond.wait()
            batch, self._outbox, self._poked = self._outbox, [], False
            over = self._over
            room, self._room = self._room, None
        resolve_soon(room)
        return batch, over

    def stop(self, *, release: bool = False) -> None:
        """The view writes no more; with ``release``, it returns the connection."""
        with self._lock:
            self.gone = True
            self._outbox = []
            if release:
                self._fd = None
            room, self._room = self._room, None
        resolve_soon(room)


class LoopEnd:
    """The socket as ``WebSocketSession`` sees it, on the loop (a ``WebSocketTransport``)."""

    def __init__(self, link: SocketLink, headers: Mapping[str, str]) -> None:
        self.link, self.headers = link, headers
        self._inbox: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue()

    async def accept(self) -> None:
        """Accepted already: simple-websocket answered the handshake in the view."""

    async def receive(self) -> Mapping[str, Any]:
        return await self._inbox.get()

    async def send_text(self, data: str) -> None:
        await self.link.send(data)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.link.post_close(code, reason)

    def deliver(self, messages: list[Mapping[str, Any]], left: bool) -> None:
        """What the view received (on the loop, through ``Bridge.on_loop``)."""
        for message in messages:
            self._inbox.put_nowait(message)
        if left:
            self._inbox.put_nowait({"type": "websocket.disconnect"})


async def serve_session(session: WebSocketSession, link: SocketLink) -> None:
    """Run ``session`` on the loop; at its end, tell the view (and free it if stuck)."""
    try:
        await session.serve()
    except OSError:  # the client left while it was being closed (1008)
        pass
    except asyncio.CancelledError:  # the bridge stops
        link.post_close(CLOSE_GOING_AWAY, "server shutting down")
        raise
    finally:
        link.end()
        asyncio.get_running_loop().call_later(CLOSE_WAIT, link.force_close)
