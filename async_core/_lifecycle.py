"""Server lifecycle: readiness, drain on SIGTERM, and the sessions to wake.

States (one per server process)::

    OPEN ──SIGTERM──► DRAINING ──all streams ended or grace over──► CLOSED

While DRAINING, ``/readyz`` answers 503, new streams are refused with 503 and
``Retry-After``, and running streams get ``drain_grace`` seconds to finish; then
each ends with an in-band ``error`` (code ``shutdown``, retryable). Only then is
the server's own shutdown started, so its graceful timeout must be longer than
the grace (``serve`` sets it so).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger("streambridge.lifecycle")


class LifecycleState(enum.Enum):
    """Where the server process is in its life."""

    OPEN = "open"
    DRAINING = "draining"
    CLOSED = "closed"


class Lifecycle:
    """Tracks running sessions and drains them when the server stops.

    Args:
        drain_grace: seconds running streams get after the drain starts.
    """

    def __init__(self, drain_grace: float) -> None:
        self.drain_grace = drain_grace
        self.state = LifecycleState.OPEN
        self.drain_deadline = math.inf
        self._sessions: set[Any] = set()
        self._idle: asyncio.Event | None = None

    @property
    def ready(self) -> bool:
        """True while new streams are admitted."""
        return self.state is LifecycleState.OPEN

    @property
    def active(self) -> int:
        """How many streams are running."""
        return len(self._sessions)

    def register(self, session: Any) -> None:
        """Track a running session (it is woken when the drain starts)."""
        self._sessions.add(session)

    def unregister(self, session: Any) -> None:
        """Forget a finished session."""
        self._sessions.discard(session)
        if not self._sessions and self._idle is not None:
            self._idle.set()

    def begin_drain(self, grace: float | None = None) -> None:
        """Stop admitting streams and give running ones ``grace`` seconds.

        Calling it again can only shorten the grace (``begin_drain(0)`` ends every
        stream now, in-band). Must be called on the event loop's thread.
        """
        grace = self.drain_grace if grace is None else grace
        deadline = asyncio.get_running_loop().time() + grace
        if self.state is not LifecycleState.OPEN:
            if deadline < self.drain_deadline:
                self.drain_deadline = deadline
                for session in list(self._sessions):
                    session.wake()
            return
        self.state = LifecycleState.DRAINING
        self.drain_deadline = deadline
        log.info("draining: %d stream(s) running, grace %.3g s", len(self._sessions), grace)
        for session in list(self._sessions):
            session.wake()

    async def wait_drained(self, within: float) -> bool:
        """Wait until no stream runs (True) or ``within`` seconds pass (False)."""
        if self._sessions:
            self._idle = asyncio.Event()
            try:
                async with asyncio.timeout(within):
                    await self._idle.wait()
            except TimeoutError:
                return False
        self.state = LifecycleState.CLOSED
        return True


def install_sigterm_drain(lifecycle: Lifecycle) -> bool:
    """Chain a SIGTERM handler that drains streams before the server's own handler runs.

    The server's handler (uvicorn's) is not replaced or patched: it is called,
    unchanged, once the streams have ended or the grace period (plus one second
    for the terminal events to be written) is over. A second SIGTERM goes to the
    server's handler at once. Returns False where signals cannot be installed
    (not the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    def forward(sig: int, frame: FrameType | None) -> None:
        if callable(previous):
            previous(sig, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    async def drain_then_forward(sig: int, frame: FrameType | None) -> None:
        lifecycle.begin_drain()
        drained = await lifecycle.wait_drained(lifecycle.drain_grace + 1.0)
        log.info("drain %s; stopping the server", "complete" if drained else "timed out")
        forward(sig, frame)

    def on_sigterm(sig: int, frame: FrameType | None) -> None:
        if lifecycle.state is LifecycleState.OPEN:
            loop.call_soon_threadsafe(
                lambda: loop.create_task(drain_then_forward(sig, frame)))
        else:
            forward(sig, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    return True
