# design: the one sync<->async seam of streambridge. This module: sync agents behind agent_q;
#   _frames.py: the pump and the WSGI body behind frames_q; _janus_queue.py: the queue both
#   use, the only user of janus (its own design block says what it assumes of janus).
# - Ownership: each worker process owns ONE asyncio loop in ONE native thread, started after
#   fork (gunicorn's post_worker_init, or lazily by the first request, checked by pid; never
#   at import, so preload_app is safe) and stopped by Bridge.stop() at worker exit. The
#   stream service (admission, sessions, metrics) lives on that loop.
# - Per stream, two bounded queues (SeamQueue: janus underneath):
#     agent_q  (sync agent -> engine):  the agent's worker blocks in agent_q.put when the
#              engine is behind (backpressure reaches the upstream socket); the engine
#              awaits agent_q.aget_batch with its timers as the deadline.
#     frames_q (engine -> WSGI body):   the pump task awaits frames_q.aput (a full queue for
#              longer than the send timeout ends the stream: send_timeout); the WSGI body
#              blocks in frames_q.get_batch.
#   No polling and no sleeps: every hop blocks or awaits. Each hop moves a batch, not a
#   token: one get takes everything queued (the engine coalesces those agent items into
#   one delta; the body joins those frames into one write). The bound counts items.
# - Wake-ups: a put that finds its reader waiting on the loop rings the loop's doorbell;
#   the puts of every stream that arrive during one pass of the loop share one self-pipe
#   write, and a queue whose reader was already rung is not rung again.
# - Disconnect: WSGI sees it only when a write fails; the server then calls body.close().
#   Heartbeats (non-empty bytes from the engine) are therefore the disconnect probe. close()
#   shuts frames_q down (the pump's put raises) and aborts the session on the loop; the
#   engine closes its source, agent_q.shutdown(immediate=True) makes the agent's blocked or
#   next put raise QueueShutDown, and the runner closes the generator: its finally runs.
#   An agent that pauses between yields waits on its request's cancel token instead of
#   time.sleep (and may register a callback that closes its upstream response), so it
#   stops at once rather than at its next put.
# - Shutdown: SIGTERM starts the lifecycle's drain (streams get drain_grace, then a terminal
#   error "shutdown"); Bridge.stop() ends whatever is left, waits for the pumps (each one
#   aclose()s its queues), shuts async generators down, closes the loop, joins the thread.
# - gevent: _glue supplies native locks, a native loop thread and HybridCondition; every
#   wait of a queue is on those (janus is only called without waiting, see _janus_queue).
#   Loop-side code must not use run_in_executor/to_thread under gevent (those threads
#   would be patched ones).
# - WebSockets (GET /v1/ws): _ws_link.py, one link per socket (an outbox under the same
#   native lock and HybridCondition) between its session on the loop and its view.
from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Iterator

from async_core import AgentEnd, Batch
from async_core.agents import AgentItem, AgentRequest
from async_core.exceptions import Overloaded

from ._cancel import CancelSignal
from ._glue import ThreadGlue
from ._janus_queue import QueueShutDown, SeamQueue


class _AgentFailed:
    """Put into agent_q by the runner when the agent raised; always its last item."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


AgentQueue = SeamQueue["AgentItem | _AgentFailed"]


def _run_agent(gen: Iterator[AgentItem], q: AgentQueue) -> None:
    """Runs on an agent worker (thread or greenlet): pushes the agent's items into agent_q."""
    try:
        for item in gen:
            q.put(item)  # blocks while full; raises QueueShutDown once cancelled
        q.shutdown()  # EOF: the engine reads what is queued, then sees the end
    except QueueShutDown:
        pass
    except Exception as error:  # the agent failed: tell the engine, in order
        with contextlib.suppress(QueueShutDown):
            q.put(_AgentFailed(error))
            q.shutdown()
    finally:
        gen.close()  # GeneratorExit at the agent's yield: its finally closes upstream


class JanusSource:
    """A sync agent running on an agent worker, seen by the engine through agent_q."""

    def __init__(self, glue: ThreadGlue, fn: Callable[[AgentRequest], Iterator[AgentItem]],
                 request: AgentRequest, maxsize: int) -> None:
        self._q: AgentQueue = SeamQueue(glue, maxsize)
        self._failed: AgentEnd | None = None
        self._cancel = CancelSignal(glue)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = math.inf
        gen = fn(request.with_cancel(self._cancel))
        if not glue.spawn_agent(lambda: _run_agent(gen, self._q)):
            gen.close()
            self._failed = AgentEnd(Overloaded("no agent worker is free in this process"))

    async def next_batch(self, deadline: float) -> Batch:
        if self._failed is not None:
            return [self._failed]
        q = self._q
        try:
            items = q.get_batch_nowait()
            if not items:
                # One timer per stream, re-armed only when the deadline moves earlier (an
                # asyncio.timeout per wait costs a TimerHandle and a cancel per token); one
                # that fires early makes this return [] and the engine waits again.
                if deadline < self._timer_when:
                    if self._timer is not None:
                        self._timer.cancel()
                    self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)
                    self._timer_when = deadline
                items = await q.aget_batch()
        except QueueShutDown:
            return [AgentEnd()]
        batch: Batch = []
        for item in items:
            if isinstance(item, _AgentFailed):
                batch.append(AgentEnd(item.error))
                return batch
            batch.append(item)
        if q.eof:  # the agent returned after these: the end goes with them
            batch.append(AgentEnd())
        return batch

    def _on_timer(self) -> None:
        self._timer, self._timer_when = None, math.inf
        self._q.interrupt()

    def wake(self) -> None:
        self._q.interrupt()

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._q.shutdown(immediate=True)  # a blocked or next put in the agent raises
        self._cancel.set()  # an agent waiting on its token (or reading upstream) stops now
        await self._q.aclose()


class JanusRunner:
    """The engine's ``SyncRunner`` for this process: sync agents behind agent_q."""

    def __init__(self, glue: ThreadGlue) -> None:
        self._glue = glue

    def start(self, fn: Callable[[AgentRequest], Iterator[AgentItem]], request: AgentRequest,
              maxsize: int) -> JanusSource:
        """Start ``fn(request)`` on an agent worker; called by the engine on the loop."""
        return JanusSource(self._glue, fn, request, maxsize)
