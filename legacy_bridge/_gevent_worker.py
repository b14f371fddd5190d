"""gunicorn's gevent worker with a bound on the time to send a request (slowloris).

gunicorn's gevent worker bounds each request's headers by ``keepalive`` (a
``gevent.Timeout`` around its parser) but not the body. This adds
``_workers.ReadDeadlines``: armed when a connection is handed over and again after
each response (the next request on a kept-alive connection), disarmed once the body
was read. Its own module, so that the gthread worker never imports gevent.
"""

from __future__ import annotations

from typing import Any

from gunicorn.workers.ggevent import GeventWorker

from ._workers import ReadDeadlines, disarm_after_read, worker_deadlines


class ReadTimeoutGeventWorker(GeventWorker):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's gevent worker with :class:`ReadDeadlines` on every request."""

    read_deadlines: ReadDeadlines

    def load_wsgi(self) -> None:
        super().load_wsgi()  # after patch_all: the deadlines' watcher is a greenlet
        self.read_deadlines = worker_deadlines()
        self.wsgi = disarm_after_read(self.wsgi, self.read_deadlines)

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        self.read_deadlines.arm(client)
        try:
            super().handle(listener, client, addr)
        finally:
            self.read_deadlines.disarm(client)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            self.read_deadlines.arm(sock)  # the next request's clock (keep-alive)
