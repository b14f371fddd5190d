"""A stream's handle on the stream log: every event the engine produces becomes an entry.

The run owns one ``LogTee`` per stream (``StreamService.open`` builds it after
``StreamLog.create``). ``StreamSession.frames`` hands it every event before encoding
it: ``append`` (never awaits; the log coalesces and writes in the background) returns
the opaque id that goes on the wire, so an attached response and every later reader
of the log show the same ids; the terminal event is ``terminal`` (``StreamLog.finish``,
bounded by ``FINISH_BOUND`` so a Redis outage cannot hold a stream's last frame).
A stream that ends without a terminal event (its client left, the send timeout) gets
one at ``close``, so a reader of the log always sees the end. Sans-wire: the entry of
an event is its native JSON payload (``to_entry``/``from_entry``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import _metrics as metrics
from ._records import Outcome
from ._tasks import cancel_and_wait
from .exceptions import StreamBridgeError
from .streamlog import Entry, Lease, StaleOwner, StreamClosed, StreamLog, encode_id
from .wire import Delta, Done, Error, Event, State, event_kind, payload

if TYPE_CHECKING:
    from ._engine import StreamSession

log = logging.getLogger("streambridge.log")
FINISH_BOUND = 2.0  # seconds the terminal entry may wait for the log (Redis down)
_SAMPLE = 32  # one append in this many is timed (the metric, not every token)


def to_entry(event: Event) -> tuple[str, dict[str, Any]]:
    """The log entry of ``event``: its native name and JSON payload (the SSE ``data:``).

    The same shape the sync producer (``streamlog.Publisher``) writes, so a reader
    cannot tell who produced a stream.
    """
    if type(event) is Delta:  # the hot path
        return "delta", {"text": event.text, "tokens": event.tokens}
    return event_kind(event), payload(event)


def from_entry(entry: Entry) -> Event:
    """The event a log entry holds (the inverse of ``to_entry``).

    Its ``seq`` is the entry's number in the log (memory ids are ``n-0``, Redis ids
    ``fence-n``): every event of a stream is an entry, in order, so it is the engine's
    ``seq``. Entries written by others (the sweeper's ``interrupted`` error, a producer
    outside the server) may lack optional fields: they get the default.
    """
    d: Mapping[str, Any] = entry.data
    seq = entry.id.minor or entry.id.major
    if entry.event == "delta":
        return Delta(seq, str(d.get("text", "")), int(d.get("tokens", 0)))
    if entry.event == "state":
        return State(seq, dict(d))
    if entry.event == "done":
        return Done(seq, d.get("finish_reason", "stop"), int(d.get("tokens", 0)),
                    d.get("ttfc_ms"), float(d.get("duration_ms", 0.0)),
                    str(d.get("conversation_id", "")), d.get("usage"))
    return Error(seq, str(d.get("code", "error")), str(d.get("message", "")),
                 bool(d.get("retryable", False)))


class LogTee:
    """Writes one running stream into the log, under its fenced lease.

    Args:
        stream_log: the process' log.
        lease: the lease ``StreamLog.create`` returned for this stream.
    """

    def __init__(self, stream_log: StreamLog, lease: Lease) -> None:
        self.log, self.lease = stream_log, lease
        self.stream_id = lease.stream_id
        self.session: StreamSession | None = None  # set once the session is built
        self.failure: StreamBridgeError | None = None  # failed before its first byte
        self.last_id: str | None = None
        self.ended = asyncio.Event()  # the terminal entry is in the log
        self.cancel_at: float | None = None
        self.on_close: Callable[[LogTee], None] | None = None
        self._count = 0
        self._lost = False
        self._prefix = ("", "")  # (epoch, "<tag>-<epoch>-"): encode_id hashes the stream id
        self._watcher: asyncio.Task[None] | None = None

    def append(self, event: Event) -> str | None:
        """Append a non-terminal event; return its wire id (None once the lease is lost)."""
        if self._lost:
            return None
        kind, data = to_entry(event)
        self._count += 1
        timed = self._count % _SAMPLE == 1
        t0 = time.perf_counter() if timed else 0.0
        try:
            eid = self.log.append(self.lease, kind, data)
        except (StaleOwner, StreamClosed) as error:
            self._lose(error)
            return None
        if timed:
            metrics.log_append(time.perf_counter() - t0)
        epoch, prefix = self._prefix
        if eid.epoch != epoch:
            text = encode_id(self.stream_id, eid)
            self._prefix = (eid.epoch, text[:text.rindex("-", 0, text.rindex("-")) + 1])
        else:
            text = f"{prefix}{eid.major}-{eid.minor}"
        self.last_id = text
        return text

    async def terminal(self, event: Event,
                       failure: StreamBridgeError | None = None) -> str | None:
        """Append the terminal event and wait (bounded) until the log holds it.

        Args:
            event: ``Done`` or ``Error``.
            failure: the error a stream that failed before its first byte raises (the
                first reader of a detached run answers it as an HTTP error).
        """
        self.failure = failure
        if self._lost or self.ended.is_set():
            return self.last_id
        kind, data = to_entry(event)
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(FINISH_BOUND):
                eid = await self.log.finish(self.lease, kind, data)
        except TimeoutError:
            log.warning("stream %s: the log did not store its terminal entry within %g s "
                        "(local readers have it; it is retried)", self.stream_id, FINISH_BOUND)
            return self.last_id  # a cursor that replays the terminal entry once stored
        except (StaleOwner, StreamClosed) as error:
            self._lose(error)
            return self.last_id
        finally:
            self.ended.set()
        metrics.log_finish(time.perf_counter() - t0)
        self.last_id = encode_id(self.stream_id, eid)
        return self.last_id

    async def close(self, outcome: Outcome) -> None:
        """The session finished: give a stream that has no terminal entry one."""
        if not self.ended.is_set():
            seq = self._count + 1
            await self.terminal(Error(seq, outcome.value, _ENDED.get(
                outcome, f"the stream ended ({outcome.value})"), outcome is Outcome.SHUTDOWN))
        if self.cancel_at is not None:
            metrics.cancel_latency(time.monotonic() - self.cancel_at)
        if self._watcher is not None:
            await cancel_and_wait(self._watcher)
        if self.on_close is not None:
            self.on_close(self)

    def watch_cancel(self) -> None:
        """Cancel this run when the log delivers an intent (``lease.cancelled``): a
        ``POST .../cancel`` that another process (or host) answered."""
        self._watcher = asyncio.get_running_loop().create_task(self._on_intent())

    async def _on_intent(self) -> None:
        await self.lease.cancelled.wait()
        if not self.lease.lost:
            self.cancel()

    def cancel(self) -> None:
        """Deliver a cancel to this process' run: the agent stops, outcome ``cancelled``."""
        if self.cancel_at is None:
            self.cancel_at = time.monotonic()
        if self.session is not None:
            self.session.cancel()

    def _lose(self, error: BaseException) -> None:
        self._lost = True
        self.ended.set()
        log.warning("stream %s: the log refused its entries (%s); stopping it",
                    self.stream_id, error)
        if self.session is not None:
            self.session.abort(Outcome.SHUTDOWN)


_ENDED = {
    Outcome.CLIENT_DISCONNECTED: "the client disconnected and the stream was stopped",
    Outcome.SEND_TIMEOUT: "the client stopped reading and the stream was stopped",
    Outcome.SHUTDOWN: "the server stopped the stream; retry to continue elsewhere",
}
