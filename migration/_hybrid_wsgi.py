"""The Flask branch's WSGI adapter: the body read on the loop, the app in a thread pool.

This replaced a2wsgi's ``WSGIMiddleware`` for the hybrid front (issue 10, "Load"),
whose every step was a round trip to the loop from the WSGI thread: each
``wsgi.input`` read (``run_coroutine_threadsafe(receive())``), the response start and
each body chunk (a put into a queue on the loop, awaited), the end of the body. Under
a 500-stream burst the loop is the one serial hop every thread waits on, and most
WSGI threads were found waiting there (py-spy: in a2wsgi's ``Body.read`` and
``start_response``). Here:

- the body is read on the loop before the thread runs, up to ``max_body`` bytes
  (the app's own limit): ``wsgi.input`` is then an ``io.BytesIO``, and a read never
  leaves the thread. A longer body (a user's upload route) is read on from the loop,
  one ASGI message per hop, as before. A client that leaves before its body is in
  gets no thread at all (nobody could read the answer).
- ``start_response`` records the status and headers and returns at once; they leave
  with the first chunk, in one hop that the thread does not wait for
  (``call_soon_threadsafe``). At most ``room`` chunks are queued for the loop
  (backpressure: a thread whose client does not read waits).
- when the app returns a ``legacy_bridge.WSGIBody`` (a streambridge stream), the thread
  returns it with the headers and is free: the caller waits for the first frame, sends
  the start and writes the frames from the loop (``_hybrid_body.write_stream``). The
  thread never waits on the loop for a stream's response, nor for its first frame
  (``legacy_bridge.FIRST_ON_LOOP``).

The executor is the one pool of the branch (``threads`` workers); the front counts
its own requests in (``HybridFront._take_thread``), so no work ever queues in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from legacy_bridge import WSGIBody

Message = dict[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_END: Message = {"type": "http.response.body", "body": b"", "more_body": False}


class _LoopInput(io.RawIOBase):
    """The rest of a body too long to read ahead: ``prefix``, then one ASGI message per read."""

    def __init__(self, prefix: bytes, loop: asyncio.AbstractEventLoop, receive: Receive) -> None:
        super().__init__()
        self._pending, self._loop, self._receive, self._more = prefix, loop, receive, True

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending and self._more:
            message = asyncio.run_coroutine_threadsafe(self._receive(), self._loop).result()
            self._more = message["type"] == "http.request" and message.get("more_body", False)
            self._pending = message.get("body", b"")
        n = min(len(buffer), len(self._pending))
        buffer[:n], self._pending = self._pending[:n], self._pending[n:]
        return n


class _Returned:
    """What the app's thread handed back: None, or a stream body the loop writes."""

    __slots__ = ("value",)

    def __init__(self, value: WSGIBody | None) -> None:
        self.value = value


class _Response:
    """One request's response, from the WSGI thread to the loop.

    Thread side: ``start_response`` and ``write``. Loop side: ``messages`` (a queue the
    thread fills with ``call_soon_threadsafe``), ``sent`` and ``fail``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, room: int) -> None:
        self.loop, self._room_size = loop, room
        self.start: Message | None = None
        self.started = False  # the start was handed to the loop (headers are final)
        self.failed = False  # the loop stopped sending: the thread's writes raise
        self._room = threading.Semaphore(room)
        self.messages: asyncio.Queue[list[Message] | _Returned | BaseException] = asyncio.Queue()

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and self.started:
            raise exc_info[1].with_traceback(exc_info[2])  # PEP 3333: too late to change
        self.start = {"type": "http.response.start", "status": int(status.split(" ", 1)[0]),
                      "headers": [(name.strip().lower().encode("latin1"),
                                   value.strip().encode("latin1")) for name, value in headers]}
        return self.write

    def write(self, chunk: bytes) -> None:
        """Hand ``chunk`` (and, the first time, the response start) to the loop."""
        if not chunk and self.started:
            return
        if self.start is None:
            raise RuntimeError("the WSGI app wrote before calling start_response")
        messages = [] if self.started else [self.start]
        self.started = True
        messages.append({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
        self._room.acquire()  # released once the loop has sent it: backpressure
        if self.failed:
            raise OSError("the client connection is gone")
        self.loop.call_soon_threadsafe(self.messages.put_nowait, messages)

    def end(self, outcome: _Returned | BaseException) -> None:
        """On the loop: the thread is done (the last item of ``messages``)."""
        if self.failed:  # nobody reads on: a stream body ends here
            if isinstance(outcome, _Returned) and outcome.value is not None:
                outcome.value.close()
            return
        self.messages.put_nowait(outcome)

    def sent(self) -> None:
        self._room.release()

    def fail(self) -> None:
        """The loop will send no more: wake a waiting writer (it raises)."""
        self.failed = True
        self._room.release(self._room_size)


class WSGIBranch:
    """Serve a WSGI app to ASGI ``http`` requests, each in a thread of one pool.

    Args:
        app: the WSGI app.
        threads: the pool's size.
        max_body: bytes of a request body read on the loop before the app runs (the
            app's own limit); the rest of a longer one is read on as the app reads.
        room: chunks of a response queued for the loop before the thread waits.
    """

    def __init__(self, app: WSGIApp, *, threads: int, max_body: int, room: int = 2) -> None:
        self.app, self.max_body, self.room = app, max_body, room
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="WSGI")

    async def read_body(self, receive: Receive) -> io.BufferedIOBase | None:
        """Read a request's body on the loop, before a thread is taken for it.

        Returns:
            The ``wsgi.input``: the whole body in memory, or (past ``max_body``) what
            was read followed by the rest, read on as the app reads. None: the client
            left (or its read timeout passed) before the body was in.
        """
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if not message.get("more_body", False):
                return io.BytesIO(b"".join(parts))
            if size > self.max_body:
                loop = asyncio.get_running_loop()
                return io.BufferedReader(_LoopInput(b"".join(parts), loop, receive))

    async def __call__(self, scope: Scope, body: io.BufferedIOBase, send: Send,
                       extra: dict[str, Any] | None = None) -> tuple[Message, WSGIBody] | None:
        """Run the app in a thread for one request; its response goes to ``send``.

        Args:
            body: the request's ``wsgi.input`` (``read_body``).
            extra: entries added to the WSGI environ.

        Returns:
            The response start (not sent) and the stream body the app returned: the
            caller sends them and closes the body. None: the response was sent whole.
        """
        environ = build_environ(scope, body)
        environ.update(extra or {})
        response = _Response(asyncio.get_running_loop(), self.room)
        self.executor.submit(contextvars.copy_context().run, self._run, environ, response)
        try:
            while isinstance(item := await response.messages.get(), list):
                for message in item:
                    await send(message)
                response.sent()
        except BaseException:  # send failed, or the request was cancelled
            response.fail()
            raise
        if isinstance(item, BaseException):
            raise item  # the app raised (Flask answers its own errors: rare)
        if response.start is None:
            raise RuntimeError("the WSGI app returned without calling start_response")
        if item.value is not None:
            return response.start, item.value
        if not response.started:
            await send(response.start)
        await send(_END)
        return None

    def close(self, *, wait: bool = False) -> None:
        """Let the pool's idle threads end (``wait``: for them to end)."""
        self.executor.shutdown(wait=wait)

    def _run(self, environ: dict[str, Any], response: _Response) -> None:
        """In a WSGI thread: run the app; hand the outcome to the loop in one hop."""
        outcome: _Returned | BaseException
        try:
            outcome = _Returned(self._call(environ, response))
        except BaseException as e:
            outcome = e
        # Straight into the response's queue: one loop callback, where the executor's own
        # future would take three (its state copied, its callbacks run, the waiter woken).
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to answer
            response.loop.call_soon_threadsafe(response.end, outcome)

    def _call(self, environ: dict[str, Any], response: _Response) -> WSGIBody | None:
        """In a WSGI thread: call the app and hand its body to the loop."""
        result = self.app(environ, response.start_response)
        if isinstance(result, WSGIBody):
            return result  # written from the loop by the caller, who closes it
        try:
            for chunk in result:
                response.write(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return None


def build_environ(scope: Scope, body: io.BufferedIOBase) -> dict[str, Any]:
    """The WSGI environ of an ASGI ``http`` scope (PEP 3333; a2wsgi's mapping)."""
    script_name = scope.get("root_path", "").encode("utf8").decode("latin1")
    path_info = scope["path"].encode("utf8").decode("latin1")
    if path_info.startswith(script_name):
        path_info = path_info[len(script_name):]
    server, port = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "asgi.scope": scope,
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        "QUERY_STRING": scope["query_string"].decode("ascii"),
        "SERVER_NAME": server,
        "SERVER_PORT": str(port or 0),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": body,
        # The input ends with the body: werkzeug reads a chunked body (no Content-Length)
        # only with this flag; without it a valid request got 400 (issue 10).
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    client = scope.get("client")
    if client is not None:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client[0], str(client[1])
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin1")
        key = {"content-length": "CONTENT_LENGTH", "content-type": "CONTENT_TYPE"}.get(
            name) or "HTTP_" + name.upper().replace("-", "_")
        value = raw_value.decode("latin1")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ
