"""cancel_and_wait stops a task without swallowing a cancellation aimed at its caller."""

from __future__ import annotations

import asyncio

import pytest

from async_core import cancel_and_wait

pytestmark = pytest.mark.anyio


async def _slow_to_stop(stopped: list[str], delay: float = 0.05) -> None:
    try:
        await asyncio.sleep(3600)
    finally:
        await asyncio.sleep(delay)  # cleanup that takes a while (closing an upstream)
        stopped.append("stopped")


async def test_it_stops_a_running_task_and_waits_for_its_cleanup() -> None:
    """The task's finally has run when cancel_and_wait returns; nothing is raised."""
    stopped: list[str] = []
    task = asyncio.create_task(_slow_to_stop(stopped))
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert stopped == ["stopped"]
    assert task.cancelled()


async def test_a_cancellation_of_the_caller_is_re_raised_after_the_task_ended() -> None:
    """Cancelling the awaiting task while it waits is not swallowed (issue 10, item 11)."""
    stopped: list[str] = []
    reached_end: list[bool] = []
    inner = asyncio.create_task(_slow_to_stop(stopped))

    async def caller() -> None:
        await asyncio.sleep(0)
        await cancel_and_wait(inner)
        reached_end.append(True)  # must not run: the caller was cancelled

    outer = asyncio.create_task(caller())
    await asyncio.sleep(0.01)  # outer is now inside cancel_and_wait
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    # As with a plain ``await task``, the second cancel reaches the task's cleanup too;
    # the task has ended when the caller's cancellation arrives.
    assert inner.done()
    assert reached_end == []


async def test_a_timeout_scope_around_it_still_fires() -> None:
    """asyncio.timeout relies on the caller's cancellation arriving: it turns into TimeoutError."""
    stopped: list[str] = []
    task = asyncio.create_task(_slow_to_stop(stopped, delay=0.2))
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await cancel_and_wait(task)
    assert task.done()


async def test_the_suppress_idiom_it_replaces_loses_that_cancellation() -> None:
    """The old idiom, for contrast: the caller runs on as if it had not been cancelled."""
    import contextlib

    stopped: list[str] = []
    reached_end: list[bool] = []

    async def caller() -> None:
        task = asyncio.create_task(_slow_to_stop(stopped))
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        reached_end.append(True)

    outer = asyncio.create_task(caller())
    await asyncio.sleep(0.01)
    outer.cancel()
    await outer  # no CancelledError: it was swallowed
    assert reached_end == [True]


async def test_a_finished_task_is_fine_and_its_error_propagates() -> None:
    """A done task: no-op for a result or a cancellation; its exception is raised."""
    async def ok() -> int:
        return 1

    async def boom() -> None:
        raise ValueError("boom")

    done = asyncio.create_task(ok())
    await done
    await cancel_and_wait(done)
    failed = asyncio.create_task(boom())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="boom"):
        await cancel_and_wait(failed)
    cancelled = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    await cancel_and_wait(cancelled)
    assert cancelled.cancelled()
