"""The Flask branch's stream bodies, written from the loop instead of a WSGI thread.

Through a2wsgi each chunk of a Flask-branch stream crossed threads twice more than
on the native branch (pump -> janus -> WSGI thread -> a2wsgi's
``run_coroutine_threadsafe`` -> loop -> socket) and each stream held a WSGI thread for
its whole life: under a 500-stream burst the worker was GIL-bound (issue 10,
docs/ARCHITECTURE.md). The front lets the Flask view run in its thread as before
(auth, admission, headers, the first frame within the header hold); when the view
returns a streambridge stream (``legacy_bridge.WSGIBody``) the WSGI adapter
(``_hybrid_wsgi.WSGIBranch``) returns that body to the front with the headers, so the
thread is free at once, and ``write_body`` sends its frames, the first included, from
the loop.

What stays as before: the pump (send timeout on a full queue, drain, metrics, the
one outcome), the sync agent's thread, ``body.close()`` on a disconnect (the front's
``DisconnectWatch``), the Flask view's headers (``X-Stream-Path: legacy``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import JSONResponse

from async_core import Outcome
from async_core.exceptions import StreamBridgeError
from legacy_bridge import STREAM_ONLY_HEADERS, WSGIBody

log = logging.getLogger("streambridge.hybrid")
Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]
# What a failed stream's answer does not keep of the view's headers: legacy_bridge's list.
_STREAM_ONLY = frozenset(name.encode() for name in STREAM_ONLY_HEADERS)


class _StuckSend:
    """One re-armed timer per stream: a write pending for ``timeout`` seconds ends it.

    uvicorn's ``send`` waits while the client does not read (flow control) and never
    resumes by itself; the pump's own send timeout cannot reach a write that waits
    on the loop, so the writer's task is cancelled here, with outcome ``send_timeout``.
    """

    def __init__(self, body: WSGIBody, task: asyncio.Task[Any], timeout: float) -> None:
        self.body, self.task, self.timeout = body, task, timeout
        self.since: float | None = None
        self.fired = False
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(timeout, self._check) if timeout else None

    def _check(self) -> None:
        now, since = asyncio.get_running_loop().time(), self.since
        if since is not None and now - since >= self.timeout:
            log.info("stream %s: client stopped reading (send timeout)",
                     self.body.session.info.stream_id)
            self.fired = True
            self.body.session.abort(Outcome.SEND_TIMEOUT)
            self.task.cancel()
            return
        delay = self.timeout if since is None else since + self.timeout - now
        self._timer = asyncio.get_running_loop().call_later(max(delay, 0.001), self._check)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


async def write_stream(start: Message, body: WSGIBody, send: Send) -> None:
    """Wait on the loop for ``body``'s first frame, then send ``start`` and the frames.

    The Flask view returned the body at once (``legacy_bridge.FIRST_ON_LOOP``), so no
    WSGI thread waits for the agent. A stream that fails before its first byte is
    answered as the legacy path answers it: the error's status and JSON body, with the
    view's headers (``X-Stream-Id``, CORS, cookies) but not the stream's own.
    """
    try:
        await body.afirst()
    except StreamBridgeError as error:
        answer = JSONResponse(error.body(), error.status, error.headers())
        kept = [(k, v) for k, v in start["headers"] if k.lower() not in _STREAM_ONLY]
        await send({"type": "http.response.start", "status": answer.status_code,
                    "headers": [*kept, *answer.raw_headers]})
        await send({"type": "http.response.body", "body": answer.body, "more_body": False})
        return
    await send(start)
    await write_body(body, send)


async def write_body(body: WSGIBody, send: Send) -> None:
    """Send ``body``'s remaining frames from the loop, then end the response.

    The response's start was sent already; the first frame (read by the view) is the
    first ``frames_on_loop`` yields.
    Ends early when the client leaves (``body.close()`` shuts the frames queue), when a
    write waits longer than the send timeout, or when the server cancels the request.
    """
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    watch = _StuckSend(body, task, body.session.policy.send_timeout)
    frames = body.frames_on_loop()
    try:
        async for chunk in frames:
            watch.since = loop.time()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            watch.since = None
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not watch.fired or task.uncancel() > 0:
            body.session.abort(Outcome.SHUTDOWN)  # cancelled by the server, not by us
            raise
    except OSError:
        pass  # the client left; close() below ends the stream as client_disconnected
    finally:
        watch.cancel()
        await frames.aclose()
        body.close()  # a no-op after EOF; else the frames queue is shut, the session aborted
