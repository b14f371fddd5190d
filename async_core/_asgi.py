"""The ASGI transport: writes a session's frames, watches for the client leaving.

``SessionResponse`` is sse-starlette's ``EventSourceResponse`` (its headers:
``Cache-Control: no-store``, ``X-Accel-Buffering: no``; its media-type and HEAD
handling) with a leaner ``__call__``. The benchmark (scripts/bench_engine.py)
measured sse-starlette's own loop at about 11 µs of CPU per write (an anyio cancel
scope around every send) and 10 KB per open stream (a three-task group, events and
a lock), which alone broke the issue's 1.5× budget against a bare
``StreamingResponse``. Here the stream is written from the request's own task, with:

- one listener task on ``receive()``: uvicorn ignores writes after a disconnect
  (uvicorn#2276), so ``http.disconnect`` is how we learn the client left; it aborts
  the session and cancels a write stuck in flow control;
- one timer per stream for the send timeout (a frozen client, sse-starlette#89),
  re-armed every ``send_timeout`` seconds rather than a scope per write;
- no ping task: the engine writes heartbeats, so both paths send the same bytes;
- no shutdown watcher: our lifecycle drains streams with a terminal event on
  SIGTERM (sse-starlette's automatic drain, which relies on its import-time patch
  of uvicorn's ``Server.handle_exit``, is turned off below).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from sse_starlette.sse import AppStatus, EventSourceResponse
from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from ._records import Outcome, Streamable
from ._tasks import cancel_and_wait
from .exceptions import StreamBridgeError

log = logging.getLogger("streambridge.asgi")

AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]


class SessionResponse(EventSourceResponse):
    """Streams ``session.frames()`` and reports to the session why the stream stopped.

    Args:
        session: the admitted session to stream, or a subscription to a stream's log.
        headers: the contract's response headers.
    """

    def __init__(self, session: Streamable, headers: dict[str, str]) -> None:
        # Not EventSourceResponse.__init__ (its headers are kept, below): its
        # MutableHeaders.update, an isinstance on a typing alias and an anyio.Lock were
        # about a tenth of the CPU of a burst of 500 new streams (py-spy; issue 16 item 3),
        # and __call__ below uses none of what it builds.
        self.session = session
        self.status_code = 200
        self.media_type = session.encoder.media_type
        self.background = None
        self.body_iterator = _never()
        merged = {name.lower(): value for name, value in headers.items()}
        merged.setdefault("cache-control", "no-store")
        merged["connection"] = "keep-alive"
        merged["x-accel-buffering"] = "no"
        self.init_headers(merged)
        self._sending_since: float | None = None
        self._stopped_by: Outcome | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session, loop = self.session, asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        listener = loop.create_task(self._listen(receive, task))
        timeout = session.policy.send_timeout
        if timeout:
            self._timer = loop.call_later(timeout, self._check_send, task, timeout)
        frames = session.frames()
        reason = Outcome.CLIENT_DISCONNECTED
        try:
            try:  # headers leave with the first frame (within policy.header_hold)
                first: bytes | None = await anext(frames)
            except StopAsyncIteration:
                first = None
            except StreamBridgeError as error:  # failed before the first byte: plain HTTP
                await _error_response(error, self.headers)(scope, receive, send)
                return
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            if first is not None:
                self._sending_since = loop.time()
                await send({"type": "http.response.body", "body": first, "more_body": True})
                self._sending_since = None
            async for chunk in frames:
                self._sending_since = loop.time()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._sending_since = None
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if self._stopped_by is None or task.uncancel() > 0:
                reason = Outcome.SHUTDOWN  # cancelled by the server, not by us
                raise
            reason = self._stopped_by
        except OSError:
            reason = Outcome.CLIENT_DISCONNECTED
        finally:
            if self._timer is not None:
                self._timer.cancel()
            listener.cancel()  # first: from here on nothing calls _stop()
            await frames.aclose()
            await session.finish(reason)
            await cancel_and_wait(listener)

    def _stop(self, task: asyncio.Task[None], reason: Outcome) -> None:
        if self._stopped_by is None:
            self._stopped_by = reason
            self.session.abort(reason)
            task.cancel()  # a write blocked in flow control never resumes by itself

    async def _listen(self, receive: Receive, task: asyncio.Task[None]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._stop(task, Outcome.CLIENT_DISCONNECTED)
                return

    def _check_send(self, task: asyncio.Task[None], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        since = self._sending_since
        if since is not None and loop.time() - since >= timeout:
            log.info("stream %s: client stopped reading (send timeout)",
                     self.session.info.stream_id)
            self._stop(task, Outcome.SEND_TIMEOUT)
            return
        delay = timeout if since is None else since + timeout - loop.time()
        self._timer = loop.call_later(max(delay, 0.001), self._check_send, task, timeout)


_STREAM_ONLY = ("content-type", "cache-control", "connection", "x-accel-buffering")


def _error_response(error: StreamBridgeError, headers: MutableHeaders) -> JSONResponse:
    """The JSON error of a stream that failed before its first byte (ids kept)."""
    kept = {k: v for k, v in headers.items() if k.lower() not in _STREAM_ONLY}
    return JSONResponse(error.body(), status_code=error.status,
                        headers={**kept, **error.headers()})


async def _never() -> AsyncIterator[bytes]:  # the base class wants one; ours is frames()
    return
    yield  # pragma: no cover
