"""The engine: one ``StreamSession`` runs one agent under a ``StreamPolicy``.

A session pulls batches from its agent source and turns them into events:
coalesced deltas, states, heartbeats when nothing was written for a while, and
exactly one terminal event (``done`` or ``error``). It owns every timer of a
stream (first chunk, idle gap, total, drain) and retries the agent only while
nothing has been committed to the client. Transports (the ASGI response, the
legacy frame pump) iterate :meth:`StreamSession.frames`, enforce the send
timeout, and call :meth:`StreamSession.finish` exactly once with the reason they
stopped; ``finish`` fixes the one outcome, releases the slot and runs the hooks.

Stream states::

    CREATED → RUNNING → TERMINATED (terminal event produced) → FINISHED
                  └──────────────→ ABORTED (transport gave up) ─┘
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import exceptions as exc
from ._records import _OUTCOME_OF, FinishHook, Outcome, ProgressHook, StreamInfo, StreamRecord
from ._settings import StreamPolicy
from ._sources import AgentEnd, AgentSource, AsyncSource, Batch, SyncRunner, agent_failure
from .agents import Agent, AgentRequest, Finish, StateUpdate, Usage
from .wire import Delta, Done, Encoder, Error, Event, State, StreamMeta

if TYPE_CHECKING:
    from ._logtee import LogTee

log = logging.getLogger("streambridge.engine")
INF = math.inf


class StreamSession:
    """One stream: an agent run, its timers, its events and its single outcome.

    Args:
        agent: the agent to run.
        request: what to ask it.
        policy: timeouts, heartbeat, buffer size and retries.
        encoder: frames events for the client's wire format.
        info: ids and labels of the stream.
        hooks: called once with the ``StreamRecord`` when the stream finishes.
        release: returns the admission slot; called exactly once by ``finish``.
        sync_runner: runs the agent's sync form; None runs its async form.
        lifecycle: the server lifecycle (drain deadline and wake-ups), optional.
        meta: the stream's wire metadata (ids, model, creation time), optional.
        progress: checkpoint hook, called from the producing loop at most every
            ``progress_every`` = (tokens, seconds), whichever comes first.
        tee: the stream's handle on the stream log: ``frames`` appends every event
            there and puts the log's id on the wire (``_logtee.py``).
    """

    def __init__(self, *, agent: Agent, request: AgentRequest, policy: StreamPolicy,
                 encoder: Encoder, info: StreamInfo, hooks: Sequence[FinishHook] = (),
                 release: Callable[[], None] | None = None,
                 sync_runner: SyncRunner | None = None, lifecycle: Any = None,
                 meta: StreamMeta | None = None, progress: ProgressHook | None = None,
                 progress_every: tuple[int, float] = (64, 0.25), tee: Any = None) -> None:
        self.agent, self.request, self.policy = agent, request, policy
        self.tee: LogTee | None = tee
        self.meta = meta
        self.encoder, self.info = encoder, info
        self._hooks, self._release, self._sync_runner = hooks, release, sync_runner
        self._lifecycle = lifecycle
        self._source: AgentSource | None = None
        self._seq = 0
        self._tokens = 0
        self._parts: list[str] = []
        self._committed = False
        self._cancelled = False
        self._abort: Outcome | None = None
        self._t0_wall = time.time()
        self._t0 = time.monotonic()
        self._ttfc: float | None = None
        self._usage: dict[str, int] | None = None
        self._finish_reason = "stop"
        self._outcome: Outcome | None = None
        self._error_code: str | None = None
        self._record: StreamRecord | None = None
        self._failure: exc.StreamBridgeError | None = None
        self._progress, self._progress_every = progress, progress_every
        self._next_cp = (progress_every[0], self._t0 + progress_every[1])
        if lifecycle is not None:
            lifecycle.register(self)

    # -- control --------------------------------------------------------------------

    @property
    def committed(self) -> bool:
        """Whether an event has been handed to the client (no retry after that)."""
        return self._committed

    @property
    def outcome(self) -> Outcome | None:
        """The outcome, once the stream has produced its terminal event or finished."""
        return self._outcome

    def wake(self) -> None:
        """Re-check the timers now (the server started draining, or a cancel arrived)."""
        if self._source is not None:
            self._source.wake()

    def cancel(self) -> None:
        """Stop the stream server-side: it ends with ``error`` code ``cancelled``."""
        self._cancelled = True
        self.wake()

    def abort(self, reason: Outcome) -> None:
        """The transport gave up (client gone, send timeout): stop without a terminal event.

        The event iterator returns at its next step, stopping the agent. Not task
        cancellation alone: a fast agent keeps the consumer's waits satisfied, and anyio
        cancels only a pending wait (found by test: the stream ran on).
        """
        if self._abort is None:
            self._abort = reason
        self.wake()

    # -- producing ------------------------------------------------------------------

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """Yield the stream's bytes: events and heartbeats in the client's format.

        Ends right after the terminal event. Closing the iterator early stops the
        agent (its ``finally`` runs) before ``aclose()`` returns. Transports send the
        response headers with the first frame, which comes within ``header_hold``
        (a heartbeat if the agent is silent).

        Raises:
            StreamBridgeError: the stream failed before its first frame; send it as an
                ordinary HTTP error (its ``status``, ``body()`` and ``headers()``).
        """
        encode, heartbeat, tee = self.encoder.encode, self.encoder.heartbeat, self.tee
        sent, eid = False, None
        async for event in self.events():
            if event is None:
                beat = heartbeat()
                if beat:
                    sent = True
                    yield beat
                continue
            failed = not sent and isinstance(event, Error) and self._failure is not None
            if tee is not None:  # the log has every event, the terminal one included
                eid = (tee.append(event) if type(event) in (Delta, State) else
                       await tee.terminal(event, self._failure if failed else None))
            if failed:  # nothing has reached the client: an ordinary HTTP error
                raise self._failure  # type: ignore[misc]
            data = encode(event, eid)
            if data:
                sent = True
                yield data

    async def collect(self) -> list[Event]:
        """Run the stream to its end without a client (buffered, ``stream: false``).

        Raises:
            StreamFailure: the stream ended with an error (its HTTP status applies).
        """
        events: list[Event] = []
        async for event in self.events():
            if event is not None:
                events.append(event)
        if isinstance(events[-1], Error) and self._failure is not None:
            raise self._failure
        return events

    async def events(self) -> AsyncGenerator[Event | None, None]:
        """Yield events, and ``None`` whenever a heartbeat is due."""
        loop = asyncio.get_running_loop()
        pol = self.policy
        now = loop.time()
        total_dl = now + pol.total_timeout if pol.total_timeout else INF
        first_dl = now + pol.first_chunk_timeout if pol.first_chunk_timeout else INF
        idle, hb = pol.idle_timeout or INF, pol.heartbeat
        attempt, got_output, idle_dl = 0, False, INF
        # The first heartbeat (which commits the headers) is due after header_hold.
        last_write = now - hb + min(hb, pol.header_hold)
        source = self._source = self._open(0)
        lifecycle = self._lifecycle
        try:
            while True:
                if self._abort is not None:
                    return
                if self._cancelled:
                    yield self._fail(_Cancelled("the stream was cancelled"))
                    return
                agent_dl = idle_dl if got_output else first_dl
                drain_dl = lifecycle.drain_deadline if lifecycle is not None else INF
                batch = await source.next_batch(min(agent_dl, total_dl, last_write + hb,
                                                    drain_dl))
                if self._abort is not None:
                    return
                now = loop.time()
                if batch:
                    end = None
                    for event in self._absorb(batch):
                        if isinstance(event, AgentEnd):
                            end = event
                        else:
                            self._committed = True
                            yield event
                    got_output, idle_dl, last_write = True, now + idle, loop.time()
                    if end is None:
                        # A never-pausing agent never lets the checks below run (issue 10).
                        drain_dl = lifecycle.drain_deadline if lifecycle is not None else INF
                        if last_write >= total_dl or last_write >= drain_dl:
                            yield self._fail(self._total_timeout() if last_write >= total_dl
                                             else _shutdown())
                            return
                        continue
                    if end.error is None:
                        yield self._done()
                        return
                    if (not self._committed and attempt < pol.retries
                            and getattr(end.error, "retryable", True)):
                        attempt += 1
                        await source.aclose()
                        # An agent may ask for a least wait (an upstream's Retry-After).
                        await asyncio.sleep(max(
                            pol.retry_backoff * 2 ** (attempt - 1)
                            * (0.5 + random.random()),  # noqa: S311
                            getattr(end.error, "retry_after", None) or 0.0))
                        got_output, now = False, loop.time()
                        if pol.first_chunk_timeout:
                            first_dl = now + pol.first_chunk_timeout
                        source = self._source = self._open(attempt)
                        continue
                    yield self._fail(agent_failure(end.error, self.agent.name, self.info.stream_id))
                    return
                if self._cancelled:
                    continue  # ends at the top of the loop
                if now >= total_dl:
                    yield self._fail(self._total_timeout())
                    return
                if now >= agent_dl:
                    if got_output:
                        yield self._fail(exc.IdleTimeout(
                            f"the agent produced nothing for {pol.idle_timeout:g} s"))
                        return
                    if not self._committed and attempt < pol.retries:
                        attempt += 1
                        await source.aclose()
                        first_dl = loop.time() + pol.first_chunk_timeout
                        source = self._source = self._open(attempt)
                        continue
                    yield self._fail(exc.FirstChunkTimeout(
                        f"the agent produced no output within {pol.first_chunk_timeout:g} s"))
                    return
                if now >= drain_dl:
                    yield self._fail(_shutdown())
                    return
                if now >= last_write + hb:
                    yield None
                    last_write = loop.time()
        finally:
            await source.aclose()

    def _open(self, attempt: int) -> AgentSource:
        request = self.request if attempt == 0 else self.request.with_attempt(attempt)
        agent, maxsize = self.agent, self.policy.buffer_size
        if self._sync_runner is not None and agent.sync_fn is not None:
            return self._sync_runner.start(agent.sync_fn, request, maxsize)
        if agent.async_fn is None:
            raise exc.StreamBridgeError(
                f"agent {agent.name!r} has only a sync form and no sync runner is configured")
        return AsyncSource(agent.async_fn(request), maxsize)

    def _absorb(self, batch: Batch) -> list[Event | AgentEnd]:
        """Turn one batch of agent items into events (consecutive deltas coalesced)."""
        out: list[Event | AgentEnd] = []
        parts: list[str] = []
        for item in batch:
            if type(item) is str:
                if item:
                    parts.append(item)
                continue
            if parts:
                out.append(self._delta(parts))
                parts = []
            if isinstance(item, AgentEnd):
                out.append(item)
                return out  # nothing after an end counts
            elif isinstance(item, StateUpdate):
                self._seq += 1
                out.append(State(self._seq, dict(item.data)))
            elif isinstance(item, Usage):
                self._usage = {"prompt_tokens": item.prompt_tokens,
                               "completion_tokens": item.completion_tokens,
                               "total_tokens": item.prompt_tokens + item.completion_tokens}
            elif isinstance(item, Finish):
                self._finish_reason = item.reason
            else:
                out.append(AgentEnd(TypeError(
                    f"agent yielded a {type(item).__name__}; expected str or a marker")))
                return out
        if parts:
            out.append(self._delta(parts))
        return out

    def _delta(self, parts: list[str]) -> Delta:
        if self._ttfc is None:
            self._ttfc = time.monotonic() - self._t0
        self._tokens += len(parts)
        text = parts[0] if len(parts) == 1 else "".join(parts)
        self._parts.append(text)
        if self._progress is not None:
            self._checkpoint()
        self._seq += 1
        return Delta(self._seq, text, self._tokens)

    def _checkpoint(self) -> None:
        now = time.monotonic()
        if self._tokens < self._next_cp[0] and now < self._next_cp[1]:
            return
        every_tokens, every_s = self._progress_every
        self._next_cp = (self._tokens + every_tokens, now + every_s)
        text = "".join(self._parts)
        self._parts = [text]  # later joins copy one string, not every delta again
        try:
            self._progress(self.info, text, self._tokens)  # type: ignore[misc]
        except Exception:
            log.exception("progress hook failed for stream %s", self.info.stream_id)

    def _done(self) -> Done:
        self._outcome = Outcome.COMPLETED
        self._seq += 1
        reason = self._finish_reason if self._finish_reason in ("stop", "length") else "stop"
        return Done(self._seq, reason, self._tokens,  # type: ignore[arg-type]
                    None if self._ttfc is None else round(self._ttfc * 1000, 3),
                    round((time.monotonic() - self._t0) * 1000, 3),
                    self.info.conversation_id, self._usage)

    def _fail(self, failure: exc.StreamBridgeError) -> Error:
        self._outcome = (Outcome.CANCELLED if isinstance(failure, _Cancelled)
                         else _OUTCOME_OF.get(type(failure), Outcome.AGENT_ERROR))
        self._error_code = failure.code
        self._failure = failure
        self._seq += 1
        return Error(self._seq, failure.code, failure.message, failure.retryable)

    def _total_timeout(self) -> exc.TotalTimeout:
        return exc.TotalTimeout(
            f"the stream exceeded the total timeout of {self.policy.total_timeout:g} s")

    # -- finishing ------------------------------------------------------------------

    async def finish(self, reason: Outcome = Outcome.CLIENT_DISCONNECTED) -> StreamRecord:
        """End the stream's bookkeeping, exactly once; later calls return the same record.

        Args:
            reason: why the transport stopped, used when no terminal event was produced.
        """
        if self._record is not None:
            return self._record
        if self._outcome is None:
            self._outcome = self._abort or reason
        record = self._record = StreamRecord(
            info=self.info, request=self.request, outcome=self._outcome,
            text="".join(self._parts), tokens=self._tokens, ttfc=self._ttfc,
            duration=time.monotonic() - self._t0, started_at=self._t0_wall,
            error_code=self._error_code, usage=self._usage)
        if self._lifecycle is not None:
            self._lifecycle.unregister(self)
        if self.tee is not None:  # a stream cut without a terminal event gets one
            await self.tee.close(self._outcome)
        release, self._release = self._release, None
        if release is not None:
            release()
        for hook in self._hooks:
            try:
                result = hook(record)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("finish hook %r failed for stream %s", hook,
                              self.info.stream_id)
        return record


def _shutdown() -> exc.StreamShutdown:
    return exc.StreamShutdown("the server is shutting down; retry to continue elsewhere")


class _Cancelled(exc.StreamFailure):
    status = 409
    code = "cancelled"
