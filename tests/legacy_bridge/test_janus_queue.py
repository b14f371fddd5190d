"""The seam's queue (``SeamQueue``): batches, both faces' waits, interrupt and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from legacy_bridge._glue import ThreadGlue
from legacy_bridge._janus_queue import QueueShutDown, SeamQueue

GLUE = ThreadGlue(8)


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a thread; its result (or exception) lands in the returned list."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as error:
            box.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


async def _join(thread: threading.Thread) -> None:
    deadline = time.monotonic() + 5
    while thread.is_alive():
        assert time.monotonic() < deadline, "thread did not finish"
        await asyncio.sleep(0.005)


@pytest.mark.anyio
async def test_a_reader_behind_takes_everything_queued_then_the_end() -> None:
    """Three puts from a thread are one batch; the shutdown after them is seen with them."""
    q: SeamQueue[int] = SeamQueue(GLUE, 8)
    thread, _ = _in_thread(lambda: [q.put(i) for i in range(3)] and q.shutdown())
    await _join(thread)
    assert await q.aget_batch() == [0, 1, 2]
    assert q.eof
    with pytest.raises(QueueShutDown):
        await q.aget_batch()
    await q.aclose()


@pytest.mark.anyio
async def test_a_put_from_a_thread_wakes_the_loop_reader_and_a_full_queue_blocks_it() -> None:
    """1,000 items through a queue of 2: every one arrives, in order; the writer waited."""
    q: SeamQueue[int] = SeamQueue(GLUE, 2)
    thread, box = _in_thread(lambda: [q.put(i) for i in range(1000)] and q.shutdown())
    got: list[int] = []
    batches: list[list[int]] = []
    with contextlib.suppress(QueueShutDown):
        while True:
            batches.append(await asyncio.wait_for(q.aget_batch(), 5))
            got += batches[-1]
    await _join(thread)
    assert all(1 <= len(b) <= 2 for b in batches)
    assert got == list(range(1000))
    assert box == [None]
    await q.aclose()


@pytest.mark.anyio
async def test_a_loop_writer_waits_while_full_and_a_thread_reader_frees_it() -> None:
    """aput waits on a full queue until the thread's get_batch; drained() ends after the last."""
    q: SeamQueue[int] = SeamQueue(GLUE, 1)
    assert q.try_put(0)
    assert not q.try_put(1)

    def read_all() -> list[int]:
        out: list[int] = []
        try:
            while True:
                out += q.get_batch()
                time.sleep(0.001)  # a slow client
        except QueueShutDown:
            return out

    thread, box = _in_thread(read_all)
    for i in range(1, 50):
        await asyncio.wait_for(q.aput(i), 5)
    q.shutdown()
    await asyncio.wait_for(q.drained(), 5)
    await _join(thread)
    assert box == [list(range(50))]
    await q.aclose()


@pytest.mark.anyio
async def test_interrupt_makes_a_pending_or_the_next_get_return_an_empty_batch() -> None:
    """interrupt() ends a waiting aget_batch with []; one that came first ends the next."""
    q: SeamQueue[int] = SeamQueue(GLUE, 4)
    waiting = asyncio.ensure_future(q.aget_batch())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    q.interrupt()
    assert await asyncio.wait_for(waiting, 1) == []
    q.interrupt()
    assert await asyncio.wait_for(q.aget_batch(), 1) == []
    await q.aclose()


@pytest.mark.anyio
async def test_an_immediate_shutdown_from_the_loop_releases_blocked_threads() -> None:
    """A put blocked on a full queue and a get blocked on an empty one both raise at once."""
    full: SeamQueue[int] = SeamQueue(GLUE, 1)
    empty: SeamQueue[int] = SeamQueue(GLUE, 1)
    full.try_put(0)
    putter, put_box = _in_thread(lambda: full.put(1))
    getter, get_box = _in_thread(empty.get_batch)
    await asyncio.sleep(0.05)
    assert putter.is_alive() and getter.is_alive()
    full.shutdown(immediate=True)
    empty.shutdown(immediate=True)
    await _join(putter)
    await _join(getter)
    assert isinstance(put_box[0], QueueShutDown) and isinstance(get_box[0], QueueShutDown)
    await full.aclose()
    await empty.aclose()


@pytest.mark.anyio
async def test_a_shutdown_from_a_thread_wakes_a_waiting_loop_writer() -> None:
    """The body's close (an immediate shutdown off the loop) ends the pump's wait when full."""
    q: SeamQueue[int] = SeamQueue(GLUE, 1)
    q.try_put(0)
    writer = asyncio.ensure_future(q.aput(1))
    await asyncio.sleep(0.01)
    thread, _ = _in_thread(lambda: q.shutdown(immediate=True))
    with pytest.raises(QueueShutDown):
        await asyncio.wait_for(writer, 2)
    await _join(thread)
    await q.aclose()
