"""A subscription: one reader of a stream's log, served by the same transports as a session.

``GET /v1/streams/{id}`` (a resume, from any cursor) and the first response of a
detached run (``on_disconnect=continue``, ``background``, a reconnect grace) are
subscriptions: they replay the log from their cursor and follow it live until the
terminal entry, framing each entry with the client's encoder and the log's id. They
never drive the run, so a second reader can never start a second generation, and a
reader leaving stops only itself (what it does to the run is the run's policy,
``_runs.Run.detach``).

A subscription has the part of ``StreamSession``'s interface the transports use
(``frames``, ``abort``, ``finish``, ``encoder``, ``policy``, ``info``: the
``Streamable`` protocol), so the ASGI response, the legacy frame pump and the hybrid
front serve it unchanged: the send timeout, disconnects and heartbeats work as for a
session. A cursor the log cannot serve gives an explicit ``reset`` event (SSE
``event: reset``, NDJSON ``{"event":"reset"}``) with the reason and the conversation
id to reload the transcript from, then the entries from the oldest one kept.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

from . import _metrics as metrics
from ._lifecycle import Lifecycle
from ._logtee import from_entry
from ._records import Outcome, StreamInfo
from ._settings import StreamPolicy
from ._tasks import cancel_and_wait
from .streamlog import EventId, ReadItem, Reset, StreamLog, encode_id
from .wire import Encoder, Error, encode_ndjson, encode_sse

if TYPE_CHECKING:
    from ._logtee import LogTee
    from ._runs import Run

_END = object()
_SHUTDOWN = "the server is shutting down; resume from the last event id elsewhere"


class Subscription:
    """Reads one stream's log from a cursor and frames it for one client.

    Args:
        stream_log: the process' log.
        cursor: read after this id (None: from the beginning).
        tenant: the reader's tenant (the log answers 404 for another's stream).
        encoder: the client's wire format.
        policy: heartbeat and header hold (the transport applies the send timeout).
        info: ids and labels (``X-Stream-Id``, metrics).
        run: the detached run this reader keeps alive, when it is this process'.
        tee: the run's log handle, for the first reader of a detached run: a stream
            that failed before its first byte is answered as an HTTP error.
        resume: count this read in ``streambridge_resumes_total``.
        lifecycle: the server's drain: a reader still following when the grace is
            over ends with an in-band ``error`` ``shutdown`` (retryable: resume
            elsewhere from the last id); it counts as a running stream meanwhile.
    """

    meta = None  # what StreamService.body reads of a session; never buffered here

    def __init__(self, stream_log: StreamLog, *, cursor: EventId | None, tenant: str | None,
                 encoder: Encoder, policy: StreamPolicy, info: StreamInfo,
                 run: Run | None = None, tee: LogTee | None = None,
                 resume: bool = False, lifecycle: Lifecycle | None = None) -> None:
        self._log, self._cursor, self._tenant = stream_log, cursor, tenant
        self.encoder, self.policy, self.info = encoder, policy, info
        self._run, self._tee, self._resume = run, tee, resume
        self._lifecycle = lifecycle
        self._drain_timer: asyncio.TimerHandle | None = None
        self._stop: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._reset = False
        self._finished = False
        if run is not None:
            run.attach()

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """Yield the stream's frames from the cursor to the terminal entry.

        Raises:
            StreamBridgeError: before the first frame: the stream is unknown (404), or
                (first reader of a detached run) it failed before its first byte.
        """
        sid, encoder, pol = self.info.stream_id, self.encoder, self.policy
        items = self._log.read(sid, self._cursor, tenant=self._tenant)
        pending: asyncio.Task[Any] | None = None
        wait, sent = min(pol.heartbeat, pol.header_hold), False
        last_id = None if self._cursor is None else encode_id(sid, self._cursor)
        if self._lifecycle is not None:
            self._lifecycle.register(self)
            self.wake()  # already draining: the deadline applies at once
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(_next(items))
                done, _ = await asyncio.wait((pending, self._stop), timeout=wait,
                                             return_when=asyncio.FIRST_COMPLETED)
                if self._stop.done():
                    if self._stop.result() is Outcome.SHUTDOWN and sent:
                        yield encoder.encode(Error(0, "shutdown", _SHUTDOWN, True), last_id)
                    return
                if pending not in done:  # nothing new for a while: a heartbeat
                    wait = pol.heartbeat
                    beat = encoder.heartbeat()
                    if beat:
                        sent = True
                        yield beat
                    continue
                item, pending = pending.result(), None
                if item is _END:
                    return
                if isinstance(item, Reset):
                    self._reset = True
                    frame = self._reset_frame(item)
                    if frame:
                        sent = True
                        yield frame
                    continue
                if (not sent and item.terminal and self._tee is not None
                        and self._tee.failure is not None):
                    raise self._tee.failure  # nothing reached the client: plain HTTP
                last_id = encode_id(sid, item.id)
                frame = encoder.encode(from_entry(item), last_id)
                if frame:
                    sent = True
                    yield frame
                if item.terminal:
                    return
        finally:
            self._leave()
            if pending is not None:
                await cancel_and_wait(pending)
            await items.aclose()  # type: ignore[attr-defined]

    def wake(self) -> None:
        """The server started draining (the lifecycle calls this): end at its deadline."""
        lifecycle = self._lifecycle
        if lifecycle is None or lifecycle.drain_deadline == math.inf:
            return
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        self._drain_timer = asyncio.get_running_loop().call_at(
            lifecycle.drain_deadline, self.abort, Outcome.SHUTDOWN)

    def _leave(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if self._lifecycle is not None:
            self._lifecycle.unregister(self)

    def _reset_frame(self, reset: Reset) -> bytes:
        body = {"reason": reset.reason, "conversation_id": self.info.conversation_id}
        if self.info.format == "sse":
            return encode_sse(event="reset", data=json.dumps(body, separators=(",", ":")))
        if self.info.format == "ndjson":
            return encode_ndjson({"event": "reset", **body})
        return b""  # plain text and the compatible formats have no such event

    def abort(self, reason: Outcome) -> None:
        """The transport gave up (client gone, send timeout): stop reading now."""
        if not self._stop.done():
            self._stop.set_result(reason)

    async def finish(self, reason: Outcome = Outcome.CLIENT_DISCONNECTED) -> None:
        """The response ended: detach from the run (its policy decides what follows)."""
        if self._finished:
            return
        self._finished = True
        self.abort(reason)
        self._leave()
        if self._resume:
            metrics.resumed(self.info.path, "reset" if self._reset else "ok")
        if self._run is not None:
            self._run.detach()


async def _next(items: AsyncIterator[ReadItem]) -> Any:
    # In a task of its own (a heartbeat must not cancel the read); StopAsyncIteration
    # cannot cross a task's result, so the end is a sentinel.
    try:
        return await anext(items)
    except StopAsyncIteration:
        return _END
