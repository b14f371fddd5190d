"""A real Celery worker (threads pool, Redis broker) streams a sync agent into the log.

The task is ``tests.cluster.celery_app.stream_agent``: ``publish_agent`` running the
sync probe agent, whose ``finally`` writes to a probe file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from async_core.streamlog import Entry, RedisLog
from tests.cluster.processes import CeleryWorker
from tests.probe_agents import probe_text, read_probe
from tests.streamlog.helpers import collect, entries

pytestmark = pytest.mark.anyio


async def wait_created(log: RedisLog, stream_id: str, worker: CeleryWorker,
                       timeout: float = 20.0) -> None:
    """Wait until the worker created the stream (it picks the task up first)."""
    deadline = time.monotonic() + timeout
    while await log.meta(stream_id) is None:
        assert time.monotonic() < deadline, (
            f"the worker never started {stream_id}:\n{worker.log()[-3000:]}")
        await asyncio.sleep(0.02)


def delta_text(items: list[Any]) -> str:
    """The concatenated text of every delta entry."""
    return "".join(str(e.data["text"]) for e in entries(items) if e.event == "delta")


@pytest.fixture(scope="module")
def worker(make_worker: Callable[[], CeleryWorker]) -> CeleryWorker:
    """The module's worker for the tests that do not kill it."""
    return make_worker()


async def test_worker_stream_is_read_whole_and_in_order(worker: CeleryWorker,
                                                        reader: RedisLog) -> None:
    """A task's stream, read while it runs, is the agent's whole text, then `done`."""
    sid = worker.enqueue("t1", tokens=300, interval_ms=2)
    await wait_created(reader, sid, worker)
    got = await collect(reader.read(sid, None, tenant="t1"), timeout=30)
    assert delta_text(got) == probe_text(300), (got[-3:], worker.log()[-3000:])
    last = entries(got)[-1]
    assert last.event == "done" and last.data["tokens"] == 300
    assert last.data["conversation_id"] == f"conv-{sid}"
    ids = [e.id.position for e in entries(got)]
    assert ids == sorted(set(ids))


async def test_cancel_intent_stops_the_task_and_the_agent_finally_runs(
        worker: CeleryWorker, reader: RedisLog, tmp_path: Path) -> None:
    """A cancel recorded in the log ends the task's stream `cancelled` within 1 s."""
    probe = tmp_path / "probe.jsonl"
    sid = worker.enqueue("t1", tokens=100_000, interval_ms=5, probe_file=str(probe))
    await wait_created(reader, sid, worker)
    items = reader.read(sid, None, tenant="t1")
    first = await asyncio.wait_for(items.__anext__(), 10)
    assert isinstance(first, Entry) and first.event == "delta"
    t0 = time.time()
    assert (await reader.request_cancel(sid)).recorded
    last = entries(await collect(items, timeout=10))[-1]
    assert last.event == "error" and last.data["code"] == "cancelled"
    deadline = time.monotonic() + 10
    while not probe.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    (record,) = read_probe(str(probe))
    assert record["produced"] < 100_000 and record["t"] - t0 < 1.0, record


async def test_sigkilled_worker_is_swept_interrupted(
        make_worker: Callable[[], CeleryWorker], reader: RedisLog) -> None:
    """After a SIGKILL of the worker, a sweeper ends its stream `interrupted` (retryable)."""
    doomed = make_worker()
    sid = doomed.enqueue("t2", tokens=100_000, interval_ms=5)
    await wait_created(reader, sid, doomed)
    items = reader.read(sid, None, tenant="t2")
    assert isinstance(await asyncio.wait_for(items.__anext__(), 10), Entry)
    doomed.kill()
    t0 = time.monotonic()
    last = entries(await collect(items, timeout=10))[-1]
    swept = time.monotonic() - t0
    assert last.event == "error" and last.data == {
        "code": "interrupted", "message": last.data["message"], "retryable": True}
    assert swept < 1.0 + 0.2 + 1.5, swept  # lease TTL + sweep interval + slack
    meta = await reader.meta(sid)
    assert meta is not None and meta.status == "error"
