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
# - One SocketLink per socket between the worlds (the lock and HybridCondition of its
#   SocketWriter, _ws_writer.py, which owns every write to the connection):
#     loop -> socket: send_text builds the text frame on the loop (ws_protocol.text_frame:
#       permessage-deflate is declined, so a frame is a header and the UTF-8 bytes).
#       The first frame of a loop pass goes to the writer at once (waiting for the pass
#       to end cost gthread, at 100 streams, ~2x the lag p50 on the busy machine); the
#       others of that pass are joined and handed over in one write by one callback at
#       the pass's end. The writer writes then and there without blocking when nobody
#       else writes. What the kernel does not take wakes the view, which writes it blocking;
#       past the writer's WINDOW the session waits (its own send queue then applies the
#       1013 policy). simple-websocket's own writes (pongs, pings, close frames, from
#       the reader or the view) go through the same writer: frames never interleave.
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
from async_core.ws_protocol import CLOSE_WAIT, text_frame

from ._glue import ThreadGlue
from ._ws_writer import SocketWriter

BATCH = 64 << 10  # bytes of frames one loop pass hands over at once, at most
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
    """What the loop and the view share for one socket (see the design block).

    Args:
        glue: the worker's blocking primitives.
        sock: the server's socket, taken over for the WebSocket.
    """

    def __init__(self, glue: ThreadGlue, sock: Any) -> None:
        self.writer = SocketWriter(glue, sock)
        self._lock, self._cond = self.writer.lock, self.writer.cond
        self._batch: list[bytes] = []  # the loop's frames of this pass (loop only)
        self._batched = 0
        self._flushing = False  # this pass wrote: a flush is scheduled at its end
        self._close: Close | None = None
        self._poked = self._over = False
        self._fd: int | None = sock.fileno()  # the connection, until the view hands it back
        self.gone = False  # the view writes no more (the client left, or it closed)

    # -- the loop's side ----------------------------------------------------------

    async def send(self, text: str) -> None:
        """Write ``text`` as a frame: at once if it is the first of this loop pass, else
        with the others of the pass at its end; past the writer's window, wait for room.

        Raises:
            ConnectionResetError: the view writes no more (the client left).
        """
        if self.gone or self._close is not None or self.writer.broken:
            raise ConnectionResetError("the client left")
        frame = text_frame(text.encode())
        if not self._flushing:  # the first of this pass: out at once
            self._flushing = True
            asyncio.get_running_loop().call_soon(self.flush)
            self.writer.offer(frame)
        else:
            self._batch.append(frame)
            self._batched += len(frame)
            if self._batched >= BATCH:
                self.flush()
                self._flushing = True
        await self.writer.room()

    def flush(self) -> None:
        """Hand the frames batched in this pass to the writer, in one write (on the loop)."""
        self._flushing = False
        if self._batch:
            batch, self._batch, self._batched = self._batch, [], 0
            self.writer.offer(batch[0] if len(batch) == 1 else b"".join(batch))

    def post_close(self, code: int, reason: str | None) -> None:
        """Have the view write a close frame after what was sent (no-op once gone)."""
        self.flush()
        with self._lock:
            if not self.gone and self._close is None:
                self._close = Close(code, reason)
                self._cond.notify_all()

    def end(self) -> None:
        """The session is over: the view writes what is left and returns."""
        self.flush()
        with self._lock:
            self._over = True
            self._cond.notify_all()

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
            # all: the reader itself, or the view, may wait on the writer's condition
            self._cond.notify_all()

    def take(self) -> tuple[Close | None, bool]:
        """Block until there is work: (the close frame to write after what waits,
        whether the session is over). What waits is written by ``writer.flush``."""
        with self._lock:
            while not (self.writer.wants_view() or self._poked or self._over
                       or self._close is not None):
                self._cond.wait()
            self._poked = False
            return self._close, self._over

    def stop(self, *, release: bool = False) -> None:
        """The view writes no more for the session; with ``release``, it is done with
        the connection (nothing is written any more, the loop's descriptor is closed)."""
        with self._lock:
            self.gone = True
            if release:
                self._fd = None
        self.writer.free_room()
        if release:
            self.writer.close()


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
