"""A stream's policy as a sans-IO state machine: events in, actions out, no I/O, no clock.

:class:`PolicyMachine` decides, for one stream, everything that depends on time and on
what the agent did: when to wait until (first chunk, idle gap, total, drain, heartbeat),
when a heartbeat is due, whether a failed attempt is retried (only before the stream is
committed, i.e. before an event reached the client; PITFALLS: a mid-stream retry
duplicates content) and which single terminal event ends the stream. It never reads a
clock, never sleeps and never draws a random number: the driver (``StreamSession.events``
in ``_engine.py``) passes the time (``loop.time()``) and the retry jitter in, and performs
the actions that come out (stop and restart the agent, sleep, write a heartbeat, emit the
terminal event). h11 is the model: the whole policy can be tested on virtual time.

States (``PolicyState``)::

    CREATED ─start→ FIRST_OUTPUT ─output→ STREAMING ─┐
                     ▲       │                │      ├→ ENDED    (terminal decided: one only)
                     │     Retry (not         │      └→ ABORTED  (transport gave up: none)
                     │     committed)         │
                     └─restarted── RETRYING ◄─┘ (output that was not yet committed)

Driving it (what ``StreamSession.events`` does)::

    m.start(now)
    repeat:  m.pending()                        → Terminate: emit it, stop
             wait for the agent until m.deadline(drain)
             a batch:  m.output(now, n); write its n events; then
                       m.written(now, drain)    → Terminate (total, drain) or None
                       or, if it ended the attempt: m.wrote(now);
                       m.agent_ended(error, jitter) → Terminate or Retry
             nothing:  m.wait_over(now, drain)  → Terminate, Retry, HEARTBEAT or None
             Retry:    stop the agent, sleep delay, m.restarted(now), start attempt
             HEARTBEAT: write one, m.wrote(now)

``cancel`` and ``abort`` come from other tasks, at any time. After ``ABORTED`` the
driver's inputs are ignored (they return None): the driver stops at its next check of
``state``. Any other input in a state that does not take it raises ``RuntimeError``
(a driver bug), as h11 raises ``LocalProtocolError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from ._records import Outcome
from ._settings import StreamPolicy

__all__ = ["HEARTBEAT", "Heartbeat", "PolicyMachine", "PolicyState", "Retry", "Terminate"]

INF = math.inf


class PolicyState(Enum):
    """Where a stream is in its policy (the diagram in the module docstring)."""

    CREATED = "created"            # not started: no deadline runs yet
    FIRST_OUTPUT = "first_output"  # an attempt runs, nothing from it yet: first-chunk deadline
    STREAMING = "streaming"        # it has produced: idle deadline (heartbeats do not reset it)
    RETRYING = "retrying"          # stop the attempt, start the agent again
    ENDED = "ended"                # the terminal event is decided; nothing follows it
    ABORTED = "aborted"            # the transport gave up: no terminal event


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Nothing was written for ``heartbeat`` seconds: write a heartbeat, then ``wrote(now)``."""


HEARTBEAT = Heartbeat()
_CREATED, _FIRST, _STREAMING = PolicyState.CREATED, PolicyState.FIRST_OUTPUT, PolicyState.STREAMING
_RETRYING, _ENDED, _ABORTED = PolicyState.RETRYING, PolicyState.ENDED, PolicyState.ABORTED


@dataclass(frozen=True, slots=True)
class Retry:
    """Stop the attempt, wait ``delay`` seconds, start attempt ``attempt``, ``restarted(now)``.

    Attributes:
        attempt: the number of the attempt to start (1 for the first retry).
        delay: seconds to wait first (0 after a first-chunk timeout: it already waited).
    """

    attempt: int
    delay: float


@dataclass(frozen=True, slots=True)
class Terminate:
    """Emit the stream's one terminal event: ``done`` if completed, else an ``error``.

    Attributes:
        outcome: the stream's outcome (its error code, unless an agent error).
        error: the agent's exception, for ``Outcome.AGENT_ERROR`` only.
    """

    outcome: Outcome
    error: BaseException | None = None


class PolicyMachine:
    """The deadlines, retries, commit and terminal event of one stream, on given time.

    Args:
        policy: timeouts (``0`` disables one), heartbeat, header hold and retries.

    Attributes:
        state: the current ``PolicyState``.
        attempt: the number of the running attempt (0 for the first).
        committed: whether an event has been handed to the client (no retry after that).
    """

    def __init__(self, policy: StreamPolicy) -> None:
        self.policy = policy
        self.state = _CREATED
        self.attempt = 0
        self.committed = False
        self._run = False  # state is FIRST_OUTPUT or STREAMING (one check on the hot path)
        self._cancel = False
        self._hb = policy.heartbeat
        self._idle = policy.idle_timeout or INF
        self._total_dl = self._first_dl = self._agent_dl = self._last_write = INF

    # -- inputs from other tasks (any time) -------------------------------------------

    def cancel(self) -> None:
        """A server-side cancel: the stream ends ``cancelled`` before its next wait."""
        if self.state is not _ENDED and self.state is not _ABORTED:
            self._cancel = True

    def abort(self) -> None:
        """The transport gave up: no terminal event, whatever was pending."""
        if self.state is not _ENDED:
            self.state, self._run = _ABORTED, False

    # -- inputs from the driver --------------------------------------------------------

    def start(self, now: float) -> None:
        """The first attempt starts at ``now``: the total and first-chunk clocks run.

        An abort that came before the start wins: the machine stays ``ABORTED``.
        """
        if self.state is not _CREATED:
            self._refuse("start")
            return
        pol = self.policy
        self._total_dl = now + pol.total_timeout if pol.total_timeout else INF
        self._first_dl = now + pol.first_chunk_timeout if pol.first_chunk_timeout else INF
        self._agent_dl = self._first_dl
        # The first heartbeat (which commits the response headers) is due after header_hold.
        self._last_write = now - self._hb + min(self._hb, pol.header_hold)
        self.state, self._run = _FIRST, True

    def pending(self) -> Terminate | None:
        """Before each wait: a cancel that arrived ends the stream now."""
        if not self._run:
            self._refuse("pending")
            return None
        return self._end(Outcome.CANCELLED) if self._cancel else None

    def deadline(self, drain: float) -> float:
        """When the next wait for the agent must return, given the drain deadline."""
        if not self._run:
            self._refuse("deadline")
            return INF
        return min(self._agent_dl, self._total_dl, self._last_write + self._hb, drain)

    def output(self, now: float, events: int) -> None:
        """The agent produced at ``now``; ``events`` of it go to the client (commit if > 0)."""
        if not self._run:
            self._refuse("output")
            return
        self.state = _STREAMING
        self._agent_dl = now + self._idle  # the idle gap from now on
        if events:
            self.committed = True

    def wrote(self, now: float) -> None:
        """The driver finished a write (a heartbeat, a batch that ended the attempt) at ``now``."""
        if not self._run:
            self._refuse("wrote")
            return
        self._last_write = now

    def written(self, now: float, drain: float) -> Terminate | None:
        """A batch's events were written by ``now``: ``wrote(now)``, then the total and
        drain deadlines, which an agent that never pauses would otherwise never let a
        wait time out for (issue 10)."""
        if self.state is not _STREAMING:
            self._refuse("written")
            return None
        self._last_write = now
        if now >= self._total_dl:
            return self._end(Outcome.TOTAL_TIMEOUT)
        if now >= drain:
            return self._end(Outcome.SHUTDOWN)
        return None

    def agent_ended(self, error: BaseException | None, jitter: float = 0.5
                    ) -> Terminate | Retry | None:
        """The agent returned (``error`` None) or raised ``error``.

        Args:
            error: what it raised; retried if not committed, attempts are left and it is
                retryable (an exception without a ``retryable`` attribute is).
            jitter: a number in [0, 1) that spreads the exponential backoff
                (``retry_backoff * 2 ** (attempt - 1) * (0.5 + jitter)``); an error's
                ``retry_after`` (an upstream's Retry-After) is a least wait.
        """
        if not self._run:
            self._refuse("agent_ended")
            return None
        if error is None:
            return self._end(Outcome.COMPLETED)
        if self._can_retry() and getattr(error, "retryable", True):
            delay = self.policy.retry_backoff * 2 ** self.attempt * (0.5 + jitter)
            return self._retry(max(delay, getattr(error, "retry_after", None) or 0.0))
        return self._end(Outcome.AGENT_ERROR, error)

    def wait_over(self, now: float, drain: float) -> Terminate | Retry | Heartbeat | None:
        """A wait returned with nothing from the agent at ``now`` (its deadline, or a wake).

        Returns:
            The first deadline that passed (total, then first chunk or idle, then drain)
            as its terminal event, a ``Retry`` for a first-chunk timeout with attempts
            left, a heartbeat when one is due, else None (wait again). None too when a
            cancel is pending: ``pending()`` ends the stream.
        """
        if not self._run:
            self._refuse("wait_over")
            return None
        if self._cancel:
            return None
        if now >= self._total_dl:
            return self._end(Outcome.TOTAL_TIMEOUT)
        if now >= self._agent_dl:
            if self.state is _STREAMING:
                return self._end(Outcome.IDLE_TIMEOUT)
            if self._can_retry():
                return self._retry(0.0)
            return self._end(Outcome.FIRST_CHUNK_TIMEOUT)
        if now >= drain:
            return self._end(Outcome.SHUTDOWN)
        if now >= self._last_write + self._hb:
            return HEARTBEAT
        return None

    def restarted(self, now: float) -> None:
        """The retried attempt started at ``now``: a fresh first-chunk deadline."""
        if self.state is not _RETRYING:
            self._refuse("restarted")
            return
        if self.policy.first_chunk_timeout:
            self._first_dl = now + self.policy.first_chunk_timeout
        self._agent_dl = self._first_dl
        self.state, self._run = _FIRST, True

    # -- helpers -------------------------------------------------------------------------

    def _can_retry(self) -> bool:
        return not self.committed and self.attempt < self.policy.retries

    def _retry(self, delay: float) -> Retry:
        self.attempt += 1
        self.state, self._run = _RETRYING, False
        return Retry(self.attempt, delay)

    def _end(self, outcome: Outcome, error: BaseException | None = None) -> Terminate:
        self.state, self._run = _ENDED, False
        return Terminate(outcome, error)

    def _refuse(self, what: str) -> None:
        """Ignore a driver input once aborted; any other misplaced input is a driver bug."""
        if self.state is not _ABORTED:
            raise RuntimeError(f"policy input {what}() in state {self.state.name}")
