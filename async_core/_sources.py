"""Agent sources: a running agent as the engine sees it.

The engine pulls *batches* from a source: everything the agent has produced
since the last pull, so deltas that queued up while the client was busy cross
to the client as one write (coalescing; no waiting is added to do it). The
buffer is bounded: a full buffer pauses the agent (backpressure).

Async agents run here, as one producer task per stream. Sync agents run in a
worker thread behind the bridge, which lives outside ``async_core`` (the janus
seam in ``legacy_bridge``) and is handed in as a :class:`SyncRunner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from . import exceptions as exc
from ._tasks import cancel_and_wait
from .agents import AgentItem, AgentRequest

log = logging.getLogger("streambridge.engine")


@dataclass(frozen=True, slots=True)
class AgentEnd:
    """The last item of every batch sequence: the agent returned or raised."""

    error: BaseException | None = None


Batch = list["AgentItem | AgentEnd"]


class AgentSource(Protocol):
    """A running agent, from the engine's side."""

    async def next_batch(self, deadline: float) -> Batch:
        """Wait for output; return all of it that is queued (``[]`` at the deadline).

        Args:
            deadline: a ``loop.time()`` value after which to give up and return ``[]``.

        Returns:
            At least one item once any is available; the batch ends with
            ``AgentEnd`` when the agent has finished. ``[]`` on timeout or ``wake()``.
        """
        ...

    def wake(self) -> None:
        """Make a pending ``next_batch`` return ``[]`` now (drain, cancel)."""
        ...

    async def aclose(self) -> None:
        """Stop the agent; its ``finally`` blocks run before this returns."""
        ...


class SyncRunner(Protocol):
    """Runs sync agents behind a bridge (implemented by ``legacy_bridge``)."""

    def start(self, fn: Callable[[AgentRequest], Iterator[AgentItem]], request: AgentRequest,
              maxsize: int) -> AgentSource:
        """Start ``fn(request)`` on a worker, with a cancel token, and return its source."""
        ...


# An agent that never awaits gets the loop for at most this long before the producer
# yields (PITFALLS: a never-awaiting agent blocked a worker for 27 s). Yielding on a
# time slice rather than per item lets queued deltas coalesce into one write.
YIELD_SLICE = 0.001


class AsyncSource:
    """An async agent running as a producer task on the current loop.

    Args:
        agen: the agent's async iterator (not started yet).
        maxsize: items buffered before the producer waits (backpressure).
    """

    def __init__(self, agen: AsyncIterator[AgentItem], maxsize: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._agen = agen
        self._buf: deque[AgentItem | AgentEnd] = deque()
        self._maxsize = maxsize
        self._getter: asyncio.Future[None] | None = None
        self._putter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = math.inf
        self._woken = False  # a wake() that came while nobody waited: the next wait returns
        self._task = self._loop.create_task(self._produce())

    async def _produce(self) -> None:
        agen, buf, now = self._agen, self._buf, self._loop.time
        end = AgentEnd()
        slice_end = now() + YIELD_SLICE
        try:
            async for item in agen:
                buf.append(item)
                self._wake_getter()
                if len(buf) >= self._maxsize:
                    self._putter = self._loop.create_future()
                    await self._putter
                    slice_end = now() + YIELD_SLICE
                elif now() >= slice_end:
                    await asyncio.sleep(0)
                    slice_end = now() + YIELD_SLICE
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            end = AgentEnd(exc)
        finally:
            # Runs the agent's own finally (GeneratorExit at its current yield).
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        buf.append(end)
        self._wake_getter()

    def _wake_getter(self) -> None:
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    async def next_batch(self, deadline: float) -> Batch:
        buf = self._buf
        if self._woken:
            self._woken = False
        elif not buf:
            getter = self._getter = self._loop.create_future()
            # One timer per stream, re-armed only when the deadline moves earlier; one
            # that fires early just returns [] and the engine waits again.
            if deadline < self._timer_when:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = self._loop.call_at(deadline, self._on_timer)
                self._timer_when = deadline
            try:
                await getter
            finally:
                self._getter = None
        batch = list(buf)
        buf.clear()
        putter = self._putter
        if putter is not None and not putter.done():
            putter.set_result(None)
        return batch

    def _on_timer(self) -> None:
        self._timer, self._timer_when = None, math.inf
        self._wake_getter()

    def wake(self) -> None:
        if self._getter is None:
            self._woken = True
        self._wake_getter()

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await cancel_and_wait(self._task)


def agent_failure(error: BaseException, agent: str, stream_id: str) -> exc.StreamFailure:
    """The stream failure an agent's error (an ``AgentEnd.error``) becomes.

    An ``AgentFailure`` keeps its own code, status and Retry-After (e.g.
    ``upstream_rate_limited``); any other exception is logged and becomes a generic
    ``agent_error`` whose message names the agent, never the exception.
    """
    if isinstance(error, exc.AgentFailure):
        return error
    if isinstance(error, exc.StreamBridgeError):
        return exc.AgentError(error.message)
    log.error("agent %r failed in stream %s", agent, stream_id, exc_info=error)
    return exc.AgentError(f"the agent {agent!r} failed")
