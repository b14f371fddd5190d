"""This process' runs: the streams it owns in the log, and the detached ones it drives.

An *attached* run (the default: ``on_disconnect=cancel`` and no reconnect grace) is
driven by its one response, as before the log existed: the response iterates the
session, so backpressure reaches the agent, the send timeout applies and a disconnect
stops the agent within a few tokens; the session tees every event into the log on the
way (``LogTee``). A *detached* run (``on_disconnect=continue``, ``background``, or a
reconnect grace) is driven by a task of its own (``Run.drive``), and every response,
the first one included, is a ``Subscription``: a reader of the log. A reader leaving
then only detaches; a ``cancel`` run whose readers all left is stopped once the grace
passes without a new one.

``Runs`` also knows this process' streams for cancels (the tee's ``cancel`` is
immediate; the log's ``request_cancel`` records the durable intent that reaches an
owner elsewhere) and, for the memory log, renews their leases and sweeps (which also
forgets streams past their retention) in one keeper task, started with the first
stream (the Redis backend has its own heartbeat and sweeper).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from . import _metrics as metrics
from ._logtee import LogTee
from ._records import Outcome
from ._tasks import cancel_and_wait
from .exceptions import Overloaded, StreamBridgeError
from .streamlog import MemoryLog, StreamLog

if TYPE_CHECKING:
    from ._engine import StreamSession

log = logging.getLogger("streambridge.runs")


class Run:
    """A detached run: a task drives the session, its readers only read the log.

    Args:
        session: the admitted session (its tee writes the log).
        tee: the session's log handle.
        grace: seconds the run survives with no reader; ``None`` runs on regardless.
        runs: the registry it belongs to.
    """

    def __init__(self, session: StreamSession, tee: LogTee, grace: float | None,
                 runs: Runs) -> None:
        self.session, self.tee, self.grace, self._runs = session, tee, grace, runs
        self.readers = 0
        self._timer: asyncio.TimerHandle | None = None
        self.task = asyncio.get_running_loop().create_task(self.drive())

    def attach(self) -> None:
        """A reader started: the run is wanted (a pending grace expiry is called off)."""
        self.readers += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def detach(self) -> None:
        """A reader left; with none left, a ``cancel`` run has ``grace`` seconds."""
        self.readers -= 1
        if self.readers > 0 or self.grace is None or self.tee.ended.is_set():
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.grace, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.readers == 0:
            log.info("stream %s: no reader came back within %g s; stopping it",
                     self.session.info.stream_id, self.grace)
            self.session.abort(Outcome.CLIENT_DISCONNECTED)

    async def drive(self) -> None:
        """Run the session to its end with no client (its frames go nowhere)."""
        reason = Outcome.CLIENT_DISCONNECTED
        try:
            async for _ in self.session.frames():
                pass
        except StreamBridgeError:
            pass  # failed before its first byte: the log has it, the first reader answers
        except asyncio.CancelledError:
            reason = Outcome.SHUTDOWN
            raise
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._runs.ended(self)  # first: its room is free once its end is in the log
            await self.session.finish(reason)


class Runs:
    """The runs of one process (shared by every branch of the hybrid front).

    Args:
        path: the metrics label of the background-runs gauge.
        max_detached: detached runs allowed at once (more: 503).
        renew: seconds between the memory log's lease renewals and sweeps.
    """

    def __init__(self, path: str, max_detached: int, renew: float) -> None:
        self.path, self.max_detached, self.renew = path, max_detached, renew
        self.tees: dict[str, LogTee] = {}
        self.detached: dict[str, Run] = {}
        self._keeper: asyncio.Task[None] | None = None

    def check_room(self) -> None:
        """Refuse a new detached run when the process has its limit of them.

        Raises:
            Overloaded: ``STREAMBRIDGE_MAX_BACKGROUND`` detached runs are going on (503).
        """
        if self.max_detached and len(self.detached) >= self.max_detached:
            raise Overloaded(f"{len(self.detached)} background runs are going on in this "
                             "process (STREAMBRIDGE_MAX_BACKGROUND)", retry_after=1.0)

    def add(self, tee: LogTee, stream_log: StreamLog) -> None:
        """Track a stream this process owns until its session finishes."""
        self.tees[tee.stream_id] = tee
        tee.on_close = self.remove
        if not isinstance(stream_log, MemoryLog):  # the intent arrives through the log
            tee.watch_cancel()
        elif self._keeper is None:  # started with the first stream, on its loop
            self._keeper = asyncio.get_running_loop().create_task(
                self._keep(stream_log, self.renew))

    def remove(self, tee: LogTee) -> None:
        """Forget a stream whose session finished."""
        if self.tees.get(tee.stream_id) is tee:
            del self.tees[tee.stream_id]

    def detach(self, session: StreamSession, tee: LogTee, grace: float | None) -> Run:
        """Start driving ``session`` with no client; see ``Run``."""
        run = self.detached[tee.stream_id] = Run(session, tee, grace, self)
        metrics.background_runs(self.path, 1)
        return run

    def ended(self, run: Run) -> None:
        """A detached run finished."""
        if self.detached.pop(run.tee.stream_id, None) is run:
            metrics.background_runs(self.path, -1)

    async def _keep(self, stream_log: MemoryLog, renew: float) -> None:
        while True:
            await asyncio.sleep(renew)
            for tee in list(self.tees.values()):
                await stream_log.renew(tee.lease)
            for stream_id in await stream_log.sweep():
                log.warning("stream %s: its run stopped renewing; ended as interrupted",
                            stream_id)

    async def aclose(self, within: float) -> None:
        """Wait up to ``within`` s for the detached runs (drained already), then stop."""
        tasks: list[Any] = [run.task for run in self.detached.values()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=within)
            for task in late:
                await cancel_and_wait(task)
        if self._keeper is not None:
            await cancel_and_wait(self._keeper)
            self._keeper = None
