# design: one writer at a time on a legacy WebSocket; the loop writes without blocking.
# - Three parties write to the connection: the loop (the session's messages), the view
#   (what the loop could not write without blocking; simple-websocket's close) and
#   simple-websocket's reader (pongs, its pings, the answer to the client's close).
#   Frames must never interleave, so every write goes through one SocketWriter, which
#   lets exactly one party write at a time (``_busy``); the others append whole frames
#   to ``_pending``, which the party that holds the pen writes after its own bytes.
# - The loop never blocks: it writes with ``send(MSG_DONTWAIT)`` through its own native
#   duplicate of the descriptor (gevent's socket methods belong to the hub's thread),
#   and only when nobody writes and nothing waits. What the kernel does not take (a
#   partial write, EAGAIN) goes to the front of ``_pending`` for the view, which owns
#   blocking writes: per token, no thread or greenlet wakes up unless the client is
#   slower than the kernel's send buffer.
# - Threads and greenlets block in ``write`` (or ``flush``): on the writer's condition
#   until nobody else writes, then in a blocking ``sendall`` on the server's own socket
#   (cooperative under gevent) with the lock released. Nobody blocks holding the lock.
# - Bounded: past WINDOW bytes waiting for the view, the loop's sender awaits ``room``
#   (resolved when a blocking writer takes them), so the session's own send queue and
#   its 1013 policy apply to a client that stopped reading.
# - A failed write breaks the writer: every later write raises (the client left).
from __future__ import annotations

import _socket
import asyncio
from typing import Any

from ._doorbell import resolve_soon
from ._glue import HybridCondition, ThreadGlue

__all__ = ["WINDOW", "SocketWriter"]

WINDOW = 16 << 10  # bytes the loop leaves for the view before its sender waits


class SocketWriter:
    """The one way to write to a socket taken over for a WebSocket (see the design block).

    Args:
        glue: the worker's blocking primitives (threads or greenlets).
        sock: the server's socket (gunicorn's, or werkzeug's): its blocking ``sendall``.
    """

    def __init__(self, glue: ThreadGlue, sock: Any) -> None:
        self.lock = glue.allocate_lock()
        self.cond = HybridCondition(self.lock, glue)  # the link waits on it too
        self._sock = sock
        self._pending = bytearray()  # whole frames nobody writes yet (a remainder first)
        self._busy = False  # a party writes outside the lock
        self._broken = False  # a write failed, or the view closed: nothing more goes out
        self._closing = False  # the view waits for the pen to close the writer
        self._room: asyncio.Future[None] | None = None  # the loop waits for the view
        self._native: Any = _socket.socket(fileno=_socket.dup(sock.fileno()))

    @property
    def broken(self) -> bool:
        """Nothing more goes out: a write failed, or the view closed the writer."""
        return self._broken

    def wants_view(self) -> bool:
        """Bytes wait for a blocking writer and nobody writes, or a write failed (the
        lock must be held): what the view wakes up for."""
        return (bool(self._pending) and not self._busy) or self._broken

    # -- the loop's side: never blocks --------------------------------------------

    def offer(self, data: bytes) -> bool:
        """Write ``data`` now if nobody writes and nothing waits, without blocking; what
        the kernel does not take waits for the view. False when the connection is gone."""
        with self.lock:
            if self._broken:
                return False
            if self._busy or self._pending:  # behind them: the writer or the view takes it
                self._pending += data
                self._check_room()
                return True
            self._busy = True
        sent = 0
        try:
            sent = self._native.send(data, _socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        except OSError:
            with self.lock:
                self._busy, self._broken = False, True
                self.cond.notify_all()
            return False
        with self.lock:
            self._busy = False
            if sent < len(data):
                self._pending[:0] = memoryview(data)[sent:]
                self._check_room()
            if self._pending or self._closing:  # ours, or a thread's that waits for the pen
                self.cond.notify_all()
        return True

    def _check_room(self) -> None:
        if len(self._pending) >= WINDOW and self._room is None:
            self._room = asyncio.get_running_loop().create_future()

    async def room(self) -> None:
        """Wait while ``WINDOW`` bytes or more wait for the view (on the loop)."""
        room = self._room
        if room is not None:
            await room

    def free_room(self) -> None:
        """Let a waiting sender go on (the view writes no more; any thread may call)."""
        with self.lock:
            room, self._room = self._room, None
        resolve_soon(room)

    # -- the threads' side: may block ---------------------------------------------

    def write(self, data: bytes) -> None:
        """Write ``data`` after what waits, blocking (a thread or greenlet only).

        Raises:
            BrokenPipeError: the connection is gone.
        """
        with self.lock:
            self._pending += data
            self._drain_locked()

    def flush(self) -> None:
        """Write what waits, blocking (the view). Raises ``BrokenPipeError`` as ``write``."""
        with self.lock:
            self._drain_locked()

    def _drain_locked(self) -> None:
        # Waits only while bytes wait: a party that writes wakes the waiters when it
        # leaves bytes behind (the loop) or at every end of a write (a thread); not
        # for each of the loop's writes, which would wake the view per token.
        while self._pending:
            if self._broken:
                break
            if self._busy:  # another party writes; it writes ours too, or leaves them
                self.cond.wait()
                continue
            data, self._pending, self._busy = bytes(self._pending), bytearray(), True
            room, self._room = self._room, None
            self.lock.release()
            try:
                resolve_soon(room)
                self._sock.sendall(data)
            except BaseException:
                self.lock.acquire()
                self._busy, self._broken = False, True
                self.cond.notify_all()
                raise
            self.lock.acquire()
            self._busy = False
            self.cond.notify_all()
        if self._broken:
            raise BrokenPipeError("the WebSocket connection is gone")

    def close(self) -> None:
        """Drop what waits and the loop's descriptor once nobody writes (the view, at
        its end: the server closes the connection after it returns)."""
        with self.lock:
            self._broken = self._closing = True
            self._pending = bytearray()
            while self._busy:
                self.cond.wait()
            native, self._native = self._native, None
            room, self._room = self._room, None
            self.cond.notify_all()
        resolve_soon(room)
        if native is not None:
            native.close()
