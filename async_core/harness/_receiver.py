"""A webhook receiver (a peer app): an HTTP server on 127.0.0.1 in a thread of this process.

It records every request (headers and body) and answers from a script of
statuses (then 204). ``stop()`` closes the listening socket (the receiver is
"down": connections are refused); ``start()`` listens again on the same port.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# 24 bytes: the Standard Webhooks example.
WEBHOOK_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class WebhookReceiver:
    """Records deliveries; answers ``statuses`` in order, then ``default``.

    Args:
        statuses: status codes for the first requests (e.g. ``[500, 500]``).
        default: the status after the script ran out.
        delay: seconds to wait before answering (to provoke timeouts).
        headers: extra response headers (e.g. ``Location``).
    """

    def __init__(self, statuses: list[int] | None = None, default: int = 204,
                 delay: float = 0.0, headers: dict[str, str] | None = None) -> None:
        self.statuses, self.default, self.delay = list(statuses or []), default, delay
        self.headers = headers or {}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.start()

    @property
    def url(self) -> str:
        """Where to post."""
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        """Listen (again, on the same port once it had one)."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers),
                                              "body": body.decode(), "t": time.time()})
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(status)
                for k, v in receiver.headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()

    def stop(self) -> None:
        """Stop listening: further connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def ids(self) -> list[str]:
        """The webhook-id of every request received, in order."""
        with self.lock:
            return [r["headers"].get("webhook-id", "") for r in self.requests]

    def payloads(self) -> list[dict[str, Any]]:
        """The JSON bodies received."""
        with self.lock:
            return [json.loads(r["body"]) for r in self.requests]

    def wait(self, predicate: Callable[[WebhookReceiver], bool], timeout: float = 15.0) -> None:
        """Poll until ``predicate(self)`` holds."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"receiver saw {len(self.requests)} request(s)")
            time.sleep(0.02)
