"""The stream policy on virtual time: deadlines, retries, commit, heartbeats, one terminal.

Two levels, no sleeps and no servers:

- the real engine (``StreamSession.events`` driving a ``PolicyMachine``, a real
  ``AsyncSource``) on an event loop whose clock jumps to the next timer instead of
  waiting (``VirtualLoop``), against every scripted agent of a small alphabet (token,
  end, retryable and fatal errors, stall) x timings before and after each deadline x
  retries left x total and drain deadlines, compared with a reference model written
  from the contract (DESIGN.md "Timeouts, named once");
- the machine alone, fed random inputs (hypothesis), for its invariants.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import selectors
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_core import (
    Agent,
    AgentFailure,
    AgentRequest,
    Outcome,
    PolicyMachine,
    PolicyState,
    SessionSettings,
    StreamInfo,
    StreamPolicy,
    StreamSession,
)
from async_core.policy import HEARTBEAT, Retry, Terminate
from async_core.wire import Delta, StreamMeta, make_encoder

INF = math.inf

# -- a loop on virtual time ------------------------------------------------------------


class _JumpingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Never blocks: a wait for I/O with a timeout moves the loop's clock forward instead."""

    loop: VirtualLoop

    def select(self, timeout: float | None = None) -> Any:
        self.loop.budget -= 1
        if self.loop.budget < 0:  # a busy loop (a deadline that never passes) fails, not hangs
            raise RuntimeError("runaway: too many loop iterations")
        ready = super().select(0)
        if not ready and timeout:
            if timeout is None or timeout == INF:
                raise RuntimeError("deadlock: nothing is scheduled and nothing can happen")
            self.loop.now += timeout
        return ready


class VirtualLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose ``time()`` advances only when every task waits (no sleeping)."""

    def __init__(self) -> None:
        selector = _JumpingSelector()
        selector.loop = self
        self.now = 0.0
        self.budget = 100_000  # loop iterations left; observe() gives each stream its own
        super().__init__(selector)

    def time(self) -> float:
        return self.now


def run_virtual(coro: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``coro()`` to its end on a fresh ``VirtualLoop``."""
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(coro())
    finally:
        loop.close()


def test_the_virtual_loop_jumps_instead_of_sleeping() -> None:
    """A 1000 s sleep takes 1000 virtual seconds and no real time (the tests below rely on it)."""
    import time

    async def nap() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(1000)
        return loop.time() - t0

    started = time.monotonic()
    assert run_virtual(nap) == pytest.approx(1000)
    assert time.monotonic() - started < 1


# -- scripted agents and the reference model -----------------------------------------

FCT, IDLE, HB, HOLD = 1.0, 2.0, 0.8, 0.3   # first chunk, idle gap, heartbeat, header hold
GAPS = (0.5, 1.5, 2.5)                       # before both / between / after both deadlines
Step = tuple[float, str]                     # (gap since the previous step, kind)
KINDS = ("tok", "ok", "err", "fatal")        # a token; return; raise retryable; not


@dataclass(frozen=True)
class Expected:
    """What the contract says a scripted stream does."""

    outcome: Outcome
    at: float          # virtual time of the terminal event
    attempts: int      # attempts started
    tokens: int        # tokens that reached the client


def reference(scripts: list[tuple[Step, ...]], retries: int, total: float, drain: float,
              retry_after: float = 0.0) -> Expected:
    """The contract, step by step: the earliest of the agent's next step and the
    deadlines wins (ties: total, then first chunk / idle, then drain); a failure or a
    first-chunk timeout is retried only while nothing reached the client and retries
    are left; a retried error waits ``retry_after`` (backoff 0 here)."""
    start, attempt, committed, tokens = 0.0, 0, False, 0
    while True:
        at, last, got = start, start, False
        for gap, kind in (*scripts[min(attempt, len(scripts) - 1)], (INF, "stall")):
            at += gap
            agent_dl = last + IDLE if got else start + FCT
            limit = min(total, agent_dl, drain)
            if at < limit:
                if kind == "tok":
                    committed, got, last, tokens = True, True, at, tokens + 1
                    continue
                if kind == "ok":
                    return Expected(Outcome.COMPLETED, at, attempt + 1, tokens)
                if kind == "err" and not committed and attempt < retries:
                    attempt, start = attempt + 1, at + retry_after
                    break
                return Expected(Outcome.AGENT_ERROR, at, attempt + 1, tokens)
            if total <= limit:
                return Expected(Outcome.TOTAL_TIMEOUT, total, attempt + 1, tokens)
            if agent_dl <= limit:
                if got:
                    return Expected(Outcome.IDLE_TIMEOUT, agent_dl, attempt + 1, tokens)
                if attempt < retries:
                    attempt, start = attempt + 1, agent_dl
                    break
                return Expected(Outcome.FIRST_CHUNK_TIMEOUT, agent_dl, attempt + 1, tokens)
            return Expected(Outcome.SHUTDOWN, drain, attempt + 1, tokens)


class _Drain:
    """A lifecycle stand-in with a fixed drain deadline (the engine only reads it)."""

    def __init__(self, deadline: float) -> None:
        self.drain_deadline = deadline

    def register(self, session: object) -> None: ...

    def unregister(self, session: object) -> None: ...


@dataclass
class Observed:
    """What the real engine did with a script."""

    outcome: Outcome
    at: float
    attempts: list[tuple[int, float]]   # (attempt, virtual start time)
    tokens: int
    kinds: list[str]                    # delta / heartbeat / done / error, in order
    times: list[float]                  # the virtual time of each
    error_code: str | None
    raised: list[float]                 # when an attempt raised (a batch with no event)


async def observe(scripts: list[tuple[Step, ...]], retries: int, total: float,
                  drain: float, retry_after: float = 0.0) -> Observed:
    """Run the real session on the running (virtual) loop with scripted attempts."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualLoop)
    loop.budget = 5_000
    t0 = loop.time()
    attempts: list[tuple[int, float]] = []
    raised: list[float] = []

    async def scripted(req: AgentRequest) -> AsyncIterator[str]:
        attempts.append((req.attempt, loop.time() - t0))
        for gap, kind in scripts[min(req.attempt, len(scripts) - 1)]:
            await asyncio.sleep(gap)
            if kind == "tok":
                yield "x"
            elif kind == "ok":
                return
            else:
                raised.append(loop.time() - t0)
                if kind == "err":
                    raise AgentFailure("flaky", retryable=True, retry_after=retry_after or None)
                raise AgentFailure("broken", retryable=False)
        await asyncio.sleep(1e9)  # stall
        yield "never"

    policy = StreamPolicy(first_chunk_timeout=FCT, idle_timeout=IDLE, heartbeat=HB,
                          header_hold=HOLD, total_timeout=total, retries=retries,
                          retry_backoff=0.0)
    meta = StreamMeta(stream_id="s", conversation_id="c", model="t", created=0.0)
    session = StreamSession(
        SessionSettings(policy=policy, lifecycle=_Drain(t0 + drain)),
        agent=Agent(name="t", async_fn=scripted),
        request=AgentRequest(({"role": "user", "content": "x"},)),
        encoder=make_encoder("sse", meta), info=StreamInfo("s", "c", "t", "async", "sse"))
    kinds: list[str] = []
    times: list[float] = []
    tokens = 0
    async for event in session.events():
        kinds.append("heartbeat" if event is None else type(event).__name__.lower())
        times.append(loop.time() - t0)
        if len(kinds) > 200:  # every script ends within 20 virtual seconds
            session.abort(Outcome.CLIENT_DISCONNECTED)
            raise AssertionError(f"a runaway stream: {kinds[-5:]} at {times[-1]:g} s")
        if isinstance(event, Delta):
            tokens = event.tokens
    record = await session.finish()
    return Observed(record.outcome, times[-1], attempts, tokens, kinds, times,
                    record.error_code, raised)


def check_invariants(seen: Observed, retries: int) -> None:
    """What holds for every stream, whatever its script."""
    # Exactly one terminal event, and it is the last.
    assert sum(k in ("done", "error") for k in seen.kinds) == 1
    assert seen.kinds[-1] in ("done", "error")
    assert (seen.kinds[-1] == "done") == (seen.outcome is Outcome.COMPLETED)
    if seen.outcome not in (Outcome.COMPLETED, Outcome.AGENT_ERROR):
        assert seen.error_code == seen.outcome.value
    # No retry after the commit: every attempt starts before the first delta.
    first_delta = next((t for k, t in zip(seen.kinds, seen.times, strict=True)
                        if k == "delta"), INF)
    assert all(start <= first_delta for _, start in seen.attempts)
    assert [a for a, _ in seen.attempts] == list(range(len(seen.attempts)))
    assert len(seen.attempts) <= retries + 1
    # Heartbeats: the first after the header hold, then one per silent heartbeat interval
    # (an attempt's failure is a batch too: it counts as a write, as it always did).
    last_write = HOLD - HB
    timeline = sorted([*zip(seen.times, seen.kinds, strict=True),
                       *((t, "raised") for t in seen.raised)])
    for t, kind in timeline:
        if kind == "heartbeat":
            assert t == pytest.approx(last_write + HB)
        else:
            assert t <= last_write + HB + 1e-9
        last_write = t


def scripts_of_one_attempt(max_tokens: int = 2) -> list[tuple[Step, ...]]:
    """Every attempt of up to ``max_tokens`` tokens, then an end of each kind or a stall,
    each step's gap before the first-chunk and idle deadlines, between them, or after."""
    out: list[tuple[Step, ...]] = []
    for n in range(max_tokens + 1):
        for gaps in itertools.product(GAPS, repeat=n):
            toks = tuple((g, "tok") for g in gaps)
            out.append(toks)  # then a stall
            out += [(*toks, (g, kind)) for g in GAPS for kind in KINDS[1:]]
    return out


LATER = {"fast_ok": ((0.5, "tok"), (0.5, "ok")), "stall": (), "fail": ((0.5, "err"),)}


@pytest.mark.parametrize("retries", [0, 1, 2])
@pytest.mark.parametrize(("total", "drain"), [(0.0, INF), (3.3, INF), (0.0, 2.7)],
                         ids=["no-deadline", "total-3.3", "drain-2.7"])
def test_every_scripted_stream_ends_as_the_contract_says(retries: int, total: float,
                                                         drain: float) -> None:
    """Each scripted agent x timing x retries left gets the reference's outcome, at the
    reference's time, with its attempts and tokens, one terminal event, no retry after
    the commit and heartbeats on time."""
    firsts = scripts_of_one_attempt()
    assert len(firsts) == 130

    async def all_cases() -> int:
        count = 0
        for first in firsts:
            for later in LATER.values():
                scripts = [first, later]
                want = reference(scripts, retries, total or INF, drain)
                seen = await observe(scripts, retries, total, drain)
                case = f"{scripts} retries={retries} total={total} drain={drain}"
                assert (seen.outcome, len(seen.attempts), seen.tokens) == (
                    want.outcome, want.attempts, want.tokens), case
                assert seen.at == pytest.approx(want.at), case
                check_invariants(seen, retries)
                count += 1
        return count

    assert run_virtual(all_cases) == 130 * len(LATER)


def test_a_retried_error_waits_its_retry_after_then_starts_a_fresh_first_chunk_clock() -> None:
    """An upstream's Retry-After is the least wait before the retry; the new attempt gets
    the whole first-chunk timeout again."""
    scripts = [((0.5, "err"),), ((0.9, "tok"), (0.5, "ok"))]

    async def case() -> Observed:
        return await observe(scripts, retries=1, total=0.0, drain=INF, retry_after=0.25)

    seen = run_virtual(case)
    assert seen.outcome is Outcome.COMPLETED
    assert seen.attempts == [(0, 0.0), (1, pytest.approx(0.75))]
    assert seen.at == pytest.approx(0.75 + 1.4)
    assert reference(scripts, 1, INF, INF, retry_after=0.25).at == pytest.approx(seen.at)


def test_first_chunk_timeout_is_retried_then_reported() -> None:
    """With retries, a silent agent is tried again, each attempt with the whole first-chunk
    timeout; then first_chunk_timeout in-band (moved here from test_engine.py: no sleeps)."""
    async def case() -> Observed:
        return await observe([()], retries=2, total=0.0, drain=INF)

    seen = run_virtual(case)
    assert seen.attempts == [(0, 0.0), (1, pytest.approx(FCT)), (2, pytest.approx(2 * FCT))]
    assert seen.kinds[-1] == "error"
    assert seen.error_code == "first_chunk_timeout"
    assert seen.at == pytest.approx(3 * FCT)


def test_a_cancel_ends_the_stream_at_its_next_step_with_cancelled() -> None:
    """A cancel during a silent wait ends the stream at once with error cancelled."""
    async def case() -> tuple[list[str], float, Outcome]:
        loop = asyncio.get_running_loop()

        async def silent(req: AgentRequest) -> AsyncIterator[str]:
            await asyncio.sleep(1e9)
            yield "never"

        session = StreamSession(
            SessionSettings(policy=StreamPolicy(heartbeat=HB, header_hold=HOLD)),
            agent=Agent(name="t", async_fn=silent),
            request=AgentRequest(({"role": "user", "content": "x"},)),
            encoder=make_encoder("sse", StreamMeta(stream_id="s", conversation_id="c",
                                                   model="t", created=0.0)),
            info=StreamInfo("s", "c", "t", "async", "sse"))
        loop.call_at(loop.time() + 1.0, session.cancel)
        kinds = [type(e).__name__ async for e in session.events()]
        return kinds, loop.time(), (await session.finish()).outcome

    kinds, at, outcome = run_virtual(case)
    assert kinds[-1] == "Error"
    assert at == pytest.approx(1.0)
    assert outcome is Outcome.CANCELLED


# -- the machine alone -----------------------------------------------------------------

INPUTS = st.lists(st.tuples(
    st.sampled_from(["output0", "output1", "end_ok", "end_err", "end_fatal", "wait",
                     "cancel", "abort"]),
    st.floats(min_value=0.0, max_value=3.0)), max_size=30)


@settings(max_examples=300, deadline=None)
@given(inputs=INPUTS, retries=st.integers(0, 3), total=st.sampled_from([0.0, 2.0, 5.0]),
       drain=st.sampled_from([INF, 4.0]), jitter=st.floats(0.0, 0.999))
def test_the_machine_keeps_its_invariants_on_any_input(
        inputs: list[tuple[str, float]], retries: int, total: float, drain: float,
        jitter: float) -> None:
    """Whatever the agent and the clock do: at most one terminal, never a retry after the
    commit or beyond the retries, deadlines never in the past of the last wait, and a
    driver input after the end is refused."""
    policy = StreamPolicy(first_chunk_timeout=1.0, idle_timeout=1.5, heartbeat=0.7,
                          total_timeout=total, retries=retries, retry_backoff=0.1)
    m = PolicyMachine(policy)
    m.start(0.0)
    now, ends, aborted = 0.0, 0, False
    for name, dt in inputs:
        if m.state is PolicyState.ENDED:
            break
        if m.state is PolicyState.RETRYING:
            m.restarted(now)
        now += dt
        action: object = None
        if name == "cancel":
            m.cancel()
        elif name == "abort":
            m.abort()
            aborted = True
        elif m.pending() is not None:
            ends += 1
            break
        elif name.startswith("output"):
            committed_before = m.committed
            m.output(now, int(name[-1]))
            assert m.committed == (committed_before or name == "output1") or aborted
            action = m.written(now, drain)
        elif name.startswith("end"):
            error = {"end_ok": None, "end_err": RuntimeError("x"),
                     "end_fatal": AgentFailure("x")}[name]
            committed = m.committed
            action = m.agent_ended(error, jitter)
            if isinstance(action, Retry):
                assert not committed
                assert action.delay == pytest.approx(0.1 * 2 ** (action.attempt - 1)
                                                     * (0.5 + jitter))
        else:
            deadline = m.deadline(drain)
            now = max(now, min(deadline, now + 10))
            action = m.wait_over(now, drain)
            if action is HEARTBEAT:
                m.wrote(now)
            elif isinstance(action, Retry):
                assert action.delay == 0 and not m.committed
        if isinstance(action, Retry):
            assert 1 <= action.attempt <= retries
            assert action.attempt == m.attempt
        if isinstance(action, Terminate):
            ends += 1
            assert m.state is PolicyState.ENDED
            assert (action.error is not None) == (action.outcome is Outcome.AGENT_ERROR)
        if aborted:
            assert action is None
            assert m.state is PolicyState.ABORTED
    assert ends <= 1
    if m.state is PolicyState.ENDED:
        with pytest.raises(RuntimeError):
            m.wait_over(now, drain)
        m.cancel()
        m.abort()
        assert m.state is PolicyState.ENDED


def test_a_machine_refuses_input_before_its_start() -> None:
    """The driver must start the clocks first: an input before ``start`` is a bug."""
    m = PolicyMachine(StreamPolicy())
    with pytest.raises(RuntimeError, match="CREATED"):
        m.deadline(INF)


def test_an_abort_before_the_start_wins() -> None:
    """A transport that gave up before the stream started gets no terminal event."""
    m = PolicyMachine(StreamPolicy())
    m.abort()
    m.start(0.0)
    assert m.state is PolicyState.ABORTED
    assert m.pending() is None
    assert m.wait_over(100.0, INF) is None


def test_the_first_heartbeat_comes_after_the_header_hold_then_every_interval() -> None:
    """Headers wait at most header_hold; later heartbeats only when nothing was written."""
    m = PolicyMachine(StreamPolicy(heartbeat=5.0, header_hold=1.0, first_chunk_timeout=30))
    m.start(10.0)
    assert m.deadline(INF) == 11.0
    assert m.wait_over(10.5, INF) is None
    assert m.wait_over(11.0, INF) is HEARTBEAT
    m.wrote(11.0)
    assert m.deadline(INF) == 16.0
    m.output(12.0, 1)
    assert m.written(12.0, INF) is None
    assert m.deadline(INF) == 17.0
    assert m.deadline(13.0) == 13.0  # a drain deadline comes first


def test_a_pending_cancel_wins_over_a_deadline_that_passed_meanwhile() -> None:
    """A cancel that woke the wait ends the stream cancelled, not with a timeout."""
    m = PolicyMachine(StreamPolicy(first_chunk_timeout=1.0, retries=0))
    m.start(0.0)
    m.cancel()
    assert m.wait_over(5.0, INF) is None
    assert m.pending() == Terminate(Outcome.CANCELLED)
