"""gunicorn workers that bound the time a client takes to send a request (slowloris).

gunicorn 27 has no header or body read timeout. gthread waits up to 5 s for a new
connection's first byte, but then gives the connection a thread that blocks reading
its headers for as long as the client trickles them: 80 trickling connections held
all 64 threads and the worker answered nothing (issue 10). gevent bounds the headers
by ``keepalive`` (a ``gevent.Timeout`` around the parser) but not the body.

These subclasses of gunicorn's own workers (selected by ``gunicorn_conf``; nothing is
patched) add one :class:`ReadDeadlines` per worker:

- armed for a connection when gunicorn queues it for a thread (gthread:
  ``enqueue_req``, a new or a kept-alive connection with data) or hands it to a
  greenlet and after each response (gevent: ``handle``, ``handle_request``);
- disarmed when the app has read the whole body (``wsgi.input`` at its end) or has
  returned its response iterable, whichever comes first;
- when it expires, the socket is shut down: the blocked read returns at once, gunicorn
  closes the connection and the thread (or greenlet) is free again; an app reading
  the body gets ``werkzeug``'s ``RequestTimeout`` (408), not a socket error.

A streaming response is not limited: the request was read before the stream began.
"""

from __future__ import annotations

import heapq
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from gunicorn.workers.gthread import ThreadWorker
from werkzeug.exceptions import RequestTimeout

from async_core import Settings

log = logging.getLogger("streambridge.server")
WSGIApp = Callable[..., Iterable[bytes]]


class ReadDeadlines:
    """Per-socket deadlines, and one watcher (thread, or greenlet under gevent) that
    shuts down each socket still armed when its deadline passes.

    Args:
        seconds: time a request may take to arrive; ``0`` arms nothing.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._armed: dict[int, tuple[float, socket.socket]] = {}
        self._heap: list[tuple[float, int]] = []
        self._expired: set[int] = set()  # sockets shut down by their deadline
        self._cond = threading.Condition()  # a gevent Condition once gevent patched
        self._watcher: threading.Thread | None = None

    def arm(self, sock: socket.socket) -> None:
        """Start ``sock``'s clock (again, for a kept-alive connection's next request)."""
        if self.seconds <= 0:
            return
        deadline = time.monotonic() + self.seconds
        with self._cond:
            self._expired.discard(id(sock))
            self._armed[id(sock)] = (deadline, sock)
            heapq.heappush(self._heap, (deadline, id(sock)))
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, daemon=True,
                                                 name="streambridge-read-deadlines")
                self._watcher.start()
            self._cond.notify()

    def disarm(self, sock: object) -> None:
        """Stop ``sock``'s clock: its request has arrived (or it is closed)."""
        with self._cond:
            self._armed.pop(id(sock), None)
            self._expired.discard(id(sock))

    def expired(self, sock: object) -> bool:
        """Whether ``sock`` was shut down because its request was late."""
        return id(sock) in self._expired

    def _watch(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    deadline, key = heapq.heappop(self._heap)
                    entry = self._armed.get(key)
                    if entry is not None and entry[0] == deadline:
                        del self._armed[key]
                        self._expired.add(key)
                        self._expire(entry[1])
                wait = self._heap[0][0] - now if self._heap else None
                self._cond.wait(wait)

    def _expire(self, sock: socket.socket) -> None:
        # Shut down a duplicate of the descriptor (shutdown acts on the connection, not
        # on the descriptor): gevent's own socket.shutdown would also fail the reading
        # greenlet with EBADF ("closed in another greenlet"), a logged traceback; a plain
        # end of stream makes gunicorn close the connection quietly.
        try:
            peer = sock.getpeername()
            with socket.fromfd(sock.fileno(), sock.family, sock.type) as dup:
                dup.shutdown(socket.SHUT_RDWR)
        except OSError:
            return  # closed meanwhile
        log.info("closed a connection from %s that took more than %g s to send its request",
                 peer, self.seconds)


def disarm_after_read(app: WSGIApp, deadlines: ReadDeadlines) -> WSGIApp:
    """WSGI middleware: disarm the connection once its body is read or the app returned."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        sock = environ.get("gunicorn.socket")
        length = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not chunked and (not length.isdigit() or int(length) == 0):
            deadlines.disarm(sock)  # no body to wait for
        else:
            environ["wsgi.input"] = _Body(environ["wsgi.input"],
                                          int(length) if length.isdigit() else None,
                                          lambda: deadlines.disarm(sock),
                                          lambda: deadlines.expired(sock))
        try:
            return app(environ, start_response)
        finally:
            deadlines.disarm(sock)

    return wrapped


class _Body:
    """``wsgi.input`` that calls ``done`` once the whole body has been read, and turns
    a read cut short by the deadline (``expired``) into a 408."""

    def __init__(self, raw: Any, length: int | None, done: Callable[[], None],
                 expired: Callable[[], bool]) -> None:
        self._raw, self._left, self._done, self._expired = raw, length, done, expired

    def _late(self) -> RequestTimeout:
        return RequestTimeout("the request body did not arrive within the read timeout")

    def _read(self, method: Callable[..., bytes], size: int | None) -> bytes:
        try:
            data = method(size)
        except Exception:
            if self._expired():
                raise self._late() from None
            raise
        if self._expired():
            raise self._late()
        return self._count(data)

    def _count(self, data: bytes) -> bytes:
        if not data:
            self._done()
        elif self._left is not None:
            self._left -= len(data)
            if self._left <= 0:
                self._done()
        return data

    def read(self, size: int | None = None) -> bytes:
        return self._read(self._raw.read, size)

    def readline(self, size: int | None = None) -> bytes:
        return self._read(self._raw.readline, size)

    def readlines(self, hint: int | None = None) -> list[bytes]:
        lines = self._raw.readlines(hint)
        self._done()
        return list(lines)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)  # anything else the server's input offers


def worker_deadlines() -> ReadDeadlines:
    """A worker's deadlines, from ``STREAMBRIDGE_REQUEST_READ_TIMEOUT``."""
    return ReadDeadlines(Settings.from_env().request_read_timeout)


class ReadTimeoutThreadWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's gthread worker with :class:`ReadDeadlines` on every request."""

    read_deadlines: ReadDeadlines

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.read_deadlines = worker_deadlines()
        self.wsgi = disarm_after_read(self.wsgi, self.read_deadlines)

    def enqueue_req(self, conn: Any) -> None:
        # The clock starts when the connection waits for a thread, not when it gets
        # one: with every thread held by slow clients, a queued one is cut in time too.
        self.read_deadlines.arm(conn.sock)
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        try:
            return super().handle(conn)
        finally:
            self.read_deadlines.disarm(conn.sock)
