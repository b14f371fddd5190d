"""The engine: one ``StreamSession`` runs one agent under a ``StreamPolicy``.

A session pulls batches from its agent source and turns them into events:
coalesced deltas, states, heartbeats when nothing was written for a while, and
exactly one terminal event (``done`` or ``error``). It owns every timer of a
stream (first chunk, idle gap, total, drain) and retries the agent only while
nothing has been committed to the client. Transports (the ASGI response, the
legacy frame pump) iterate :meth:`StreamSession.frames`, enforce the send
timeout, and call :meth:`StreamSession.finish` exactly once with the reason they
stopped; ``finish`` fixes the one outcome, releases the slot and runs the hooks.

The policy — deadlines, heartbeats, retries, the commit and the terminal event —
is the sans-IO ``PolicyMachine`` (``policy.py``); ``events`` is its thin driver.

Stream states (the policy's own are in ``policy.py``)::

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import exceptions as exc
from ._records import FinishHook, Outcome, ProgressHook, StreamInfo, StreamRecord
from ._settings import StreamPolicy
from ._sources import AgentEnd, AgentSource, AsyncSource, Batch, SyncRunner, agent_failure
from .agents import Agent, AgentRequest, Finish, StateUpdate, Usage
from .policy import Heartbeat, PolicyMachine, PolicyState, Retry, Terminate
from .wire import Delta, Done, Encoder, Error, Event, State, StreamMeta

if TYPE_CHECKING:
    from ._logtee import LogTee

log = logging.getLogger("streambridge.engine")
INF = math.inf
ABORTED = PolicyState.ABORTED


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionSettings:
    """What every session of one service shares: its policy and its wiring.

    Attributes:
        policy: timeouts, heartbeat, buffer size and retries.
        hooks: called once with the ``StreamRecord`` when a stream finishes.
        lifecycle: the server lifecycle (drain deadline and wake-ups), optional.
        progress: checkpoint hook, called from the producing loop at most every
            ``progress_every`` = (tokens, seconds), whichever comes first.
        progress_every: see ``progress``.
    """

    policy: StreamPolicy = StreamPolicy()
    hooks: Sequence[FinishHook] = ()
    lifecycle: Any = None
    progress: ProgressHook | None = None
    progress_every: tuple[int, float] = (64, 0.25)


class StreamSession:
    """One stream: an agent run, its timers, its events and its single outcome.

    Args:
        settings: the policy and wiring shared by the service's sessions.
        agent: the agent to run.
        request: what to ask it.
        encoder: frames events for the client's wire format.
        info: ids and labels of the stream.
        release: returns the admission slot; called exactly once by ``finish``.
        sync_runner: runs the agent's sync form; None runs its async form.
        meta: the stream's wire metadata (ids, model, creation time), optional.
        tee: the stream's handle on the stream log: ``frames`` appends every event
            there and puts the log's id on the wire (``_logtee.py``).
    """

    def __init__(self, settings: SessionSettings, *, agent: Agent, request: AgentRequest,
                 encoder: Encoder, info: StreamInfo,
                 release: Callable[[], None] | None = None,
                 sync_runner: SyncRunner | None = None, meta: StreamMeta | None = None,
                 tee: Any = None) -> None:
        self.agent, self.request, self.policy = agent, request, settings.policy
        self.tee: LogTee | None = tee
        self.meta = meta
        self.encoder, self.info = encoder, info
        self._hooks, self._release, self._sync_runner = settings.hooks, release, sync_runner
        self._lifecycle = lifecycle = settings.lifecycle
        self._machine = PolicyMachine(settings.policy)
        self._source: AgentSource | None = None
        self._seq = 0
        self._tokens = 0
        self._parts: list[str] = []
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
        self._progress, self._progress_every = settings.progress, settings.progress_every
        self._next_cp = (self._progress_every[0], self._t0 + self._progress_every[1])
        if lifecycle is not None:
            lifecycle.register(self)

    # -- control --------------------------------------------------------------------

    @property
    def committed(self) -> bool:
        """Whether an event has been handed to the client (no retry after that)."""
        return self._machine.committed

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
        self._machine.cancel()
        self.wake()

    def abort(self, reason: Outcome) -> None:
        """The transport gave up (client gone, send timeout): stop without a terminal event.

        The event iterator returns at its next step, stopping the agent. Not task
        cancellation alone: a fast agent keeps the consumer's waits satisfied, and anyio
        cancels only a pending wait (found by test: the stream ran on).
        """
        if self._abort is None:
            self._abort = reason
        self._machine.abort()
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
        """Yield events, and ``None`` whenever a heartbeat is due.

        The driver of the stream's ``PolicyMachine`` (``policy.py``): it waits for the
        agent until the machine's deadline, hands it the time and what came, and performs
        what the machine answers (a heartbeat, a retry, the terminal event).
        """
        loop = asyncio.get_running_loop()
        m = self._machine
        m.start(loop.time())
        source = self._source = self._open(0)
        try:
            while True:
                if m.state is ABORTED:
                    return
                end = m.pending()
                if end is not None:
                    yield self._terminal(end)
                    return
                drain = self._drain_deadline()
                batch = await source.next_batch(m.deadline(drain))
                if m.state is ABORTED:
                    return
                now = loop.time()
                action: Terminate | Retry | Heartbeat | None
                if batch:
                    events, agent_end = self._absorb(batch)
                    m.output(now, len(events))
                    for event in events:
                        yield event
                    if m.state is ABORTED:  # during a yield: stop at this step
                        return
                    if agent_end is None:  # a drain may have begun during the yields
                        action = m.written(loop.time(), self._drain_deadline())
                    else:
                        m.wrote(loop.time())
                        action = m.agent_ended(agent_end.error, random.random())  # noqa: S311
                else:
                    action = m.wait_over(now, drain)
                if action is None:
                    continue
                if isinstance(action, Terminate):
                    yield self._terminal(action)
                    return
                if isinstance(action, Retry):
                    await source.aclose()
                    if action.delay:
                        await asyncio.sleep(action.delay)
                    m.restarted(loop.time())
                    source = self._source = self._open(action.attempt)
                else:  # a heartbeat
                    yield None
                    m.wrote(loop.time())  # a no-op if aborted meanwhile: the top returns
        finally:
            await source.aclose()

    def _drain_deadline(self) -> float:
        """When the drain ends this stream (``INF`` while none has begun)."""
        return self._lifecycle.drain_deadline if self._lifecycle is not None else INF

    def _open(self, attempt: int) -> AgentSource:
        request = self.request if attempt == 0 else self.request.with_attempt(attempt)
        agent, maxsize = self.agent, self.policy.buffer_size
        if self._sync_runner is not None and agent.sync_fn is not None:
            return self._sync_runner.start(agent.sync_fn, request, maxsize)
        if agent.async_fn is None:
            raise exc.StreamBridgeError(
                f"agent {agent.name!r} has only a sync form and no sync runner is configured")
        return AsyncSource(agent.async_fn(request), maxsize)

    def _absorb(self, batch: Batch) -> tuple[list[Event], AgentEnd | None]:
        """Turn one batch of agent items into events (consecutive deltas coalesced).

        Returns:
            The events, and the agent's end if the batch has it (nothing after it counts).
        """
        out: list[Event] = []
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
                return out, item
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
                return out, AgentEnd(TypeError(
                    f"agent yielded a {type(item).__name__}; expected str or a marker"))
        if parts:
            out.append(self._delta(parts))
        return out, None

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

    def _terminal(self, end: Terminate) -> Done | Error:
        """The terminal event the machine decided, as ``done`` or an ``error``."""
        outcome, pol = end.outcome, self.policy
        if outcome is Outcome.COMPLETED:
            return self._done()
        failure: exc.StreamBridgeError
        if outcome is Outcome.AGENT_ERROR:
            assert end.error is not None
            failure = agent_failure(end.error, self.agent.name, self.info.stream_id)
        elif outcome is Outcome.FIRST_CHUNK_TIMEOUT:
            failure = exc.FirstChunkTimeout(
                f"the agent produced no output within {pol.first_chunk_timeout:g} s")
        elif outcome is Outcome.IDLE_TIMEOUT:
            failure = exc.IdleTimeout(f"the agent produced nothing for {pol.idle_timeout:g} s")
        elif outcome is Outcome.TOTAL_TIMEOUT:
            failure = exc.TotalTimeout(
                f"the stream exceeded the total timeout of {pol.total_timeout:g} s")
        elif outcome is Outcome.SHUTDOWN:
            failure = exc.StreamShutdown(
                "the server is shutting down; retry to continue elsewhere")
        else:
            failure = _Cancelled("the stream was cancelled")
        self._outcome = outcome
        self._error_code = failure.code
        self._failure = failure
        self._seq += 1
        return Error(self._seq, failure.code, failure.message, failure.retryable)

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


class _Cancelled(exc.StreamFailure):
    status = 409
    code = "cancelled"
