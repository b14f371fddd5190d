"""What ``legacy_bridge/_janus_queue.py`` assumes of the installed janus, beyond its docs.

Each test pins one assumption of that module's design block (A1-A3) against the janus
(and gevent) installed here, so an upgrade that breaks one fails here first, by name.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import janus
import pytest

REPO = Path(__file__).resolve().parents[2]


class _CountingLoop(asyncio.SelectorEventLoop):
    """An asyncio loop that counts what is scheduled on it from outside the test."""

    def __init__(self) -> None:
        super().__init__()
        self.threadsafe_calls = 0
        self.tasks = 0

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> asyncio.Handle:
        self.threadsafe_calls += 1
        return super().call_soon_threadsafe(*args, **kwargs)

    def create_task(self, *args: Any, **kwargs: Any) -> asyncio.Task[Any]:
        self.tasks += 1
        return super().create_task(*args, **kwargs)


def _run(main: Callable[[], Any]) -> _CountingLoop:
    loop = _CountingLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return loop


def test_a1_nowait_calls_never_wait_and_schedule_nothing_on_the_loop() -> None:
    """Full/Empty traffic on both faces, from a thread and the loop, schedules nothing."""
    rounds = 2000
    errors: list[BaseException] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, _CountingLoop)
        loop.threadsafe_calls = loop.tasks = 0  # from here on: what janus schedules
        q: janus.Queue[int] = janus.Queue(2)
        q.async_q.put_nowait(0)  # binds the async side to this loop, as the seam does

        def churn(face: janus.BaseQueue[int], full: type[Exception], empty: type[Exception],
                  i: int) -> None:
            with contextlib.suppress(full):
                face.put_nowait(i)
            with contextlib.suppress(empty):
                face.get_nowait()

        def thread_side() -> None:
            try:
                for i in range(rounds):
                    churn(q.sync_q, janus.SyncQueueFull, janus.SyncQueueEmpty, i)
            except BaseException as error:  # reported below, in the test's thread
                errors.append(error)

        worker = threading.Thread(target=thread_side)
        worker.start()
        for i in range(rounds):
            churn(q.async_q, janus.AsyncQueueFull, janus.AsyncQueueEmpty, i)
            if i % 100 == 0:
                await asyncio.sleep(0)
        worker.join(10)
        q.shutdown()
        assert q.closed  # shut down, and no notifier task of janus pending
        await q.aclose()

    loop = _run(main)
    assert not errors
    assert (loop.threadsafe_calls, loop.tasks) == (0, 0)


def test_a3_shutdown_drains_then_raises_and_immediate_drops() -> None:
    """After shutdown() gets take what is queued, then raise, and a put raises ShutDown
    (full or not); immediate=True drops what is queued."""

    async def main() -> None:
        eof: janus.Queue[int] = janus.Queue(4)
        eof.sync_q.put_nowait(1)
        eof.sync_q.put_nowait(2)
        eof.shutdown()
        with pytest.raises(janus.SyncQueueShutDown):
            eof.sync_q.put_nowait(3)
        with pytest.raises(janus.AsyncQueueShutDown):
            eof.async_q.put_nowait(3)
        assert eof.sync_q.get_nowait() == 1
        assert eof.async_q.get_nowait() == 2
        with pytest.raises(janus.SyncQueueShutDown):
            eof.sync_q.get_nowait()
        with pytest.raises(janus.AsyncQueueShutDown):
            eof.async_q.get_nowait()
        assert eof.async_q.qsize() == 0
        await eof.aclose()

        full: janus.Queue[int] = janus.Queue(1)
        full.sync_q.put_nowait(1)
        full.shutdown()  # an EOF on a full queue: a put is told "ended", never "full"
        with pytest.raises(janus.SyncQueueShutDown):
            full.sync_q.put_nowait(2)
        with pytest.raises(janus.AsyncQueueShutDown):
            full.async_q.put_nowait(2)
        assert full.async_q.get_nowait() == 1
        await full.aclose()

        stop: janus.Queue[int] = janus.Queue(4)
        stop.async_q.put_nowait(1)
        stop.shutdown(immediate=True)
        assert stop.async_q.qsize() == 0
        with pytest.raises(janus.AsyncQueueShutDown):
            stop.async_q.get_nowait()
        with pytest.raises(janus.SyncQueueShutDown):
            stop.sync_q.get_nowait()
        with pytest.raises(janus.SyncQueueShutDown):
            stop.sync_q.put_nowait(2)
        await stop.aclose()

    _run(main)


_GEVENT_SCRIPT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()

    import gevent
    from gevent._hub_local import get_hub_if_exists  # no public "does this thread have one"

    from legacy_bridge._glue import GeventGlue
    from legacy_bridge._janus_queue import QueueShutDown, SeamQueue

    N = 20000
    glue = GeventGlue(8)
    loop = glue.new_loop()
    agent_q, frames_q = SeamQueue(glue, 4), SeamQueue(glue, 4)
    state = {"ticks": 0, "loop_hub": "unset", "done": False}

    async def engine():  # on the native loop thread: agent_q -> frames_q, as the pump does
        try:
            while True:
                for item in await agent_q.aget_batch():
                    if not frames_q.try_put(item):
                        await frames_q.aput(item)
        except QueueShutDown:
            pass
        frames_q.shutdown()
        await frames_q.drained()
        await agent_q.aclose()
        await frames_q.aclose()
        state["loop_hub"] = get_hub_if_exists()

    def agent():
        for i in range(N):
            agent_q.put(i)
        agent_q.shutdown()

    def body():
        out = []
        try:
            while True:
                out.extend(frames_q.get_batch())
        except QueueShutDown:
            return out

    def ticker():
        while not state["done"]:
            state["ticks"] += 1
            gevent.sleep(0.001)

    glue.start_thread(lambda: (loop.run_until_complete(engine()), loop.close()))
    tick = gevent.spawn(ticker)
    gevent.spawn(agent)
    reader = gevent.spawn(body)
    out = reader.get(timeout=60)
    for _ in range(10000):  # the body ends at the last frame; the engine closes just after
        if state["loop_hub"] != "unset":
            break
        gevent.sleep(0.001)
    state["done"] = True
    tick.join()
    assert out == list(range(N)), (len(out), out[:5])
    assert state["loop_hub"] is None, state["loop_hub"]
    assert state["ticks"] > 5, state["ticks"]
    print("ok", state["ticks"])
""")


def test_a2_janus_under_gevent_with_a_native_loop_thread() -> None:
    """After patch_all, greenlets and the native loop thread move 20,000 items both ways.

    janus' lock is then a greenlet lock, taken from the loop thread too: always inside
    the seam's native lock, so never contended. The hub keeps running other greenlets,
    and the loop thread never gets a hub of its own.
    """
    done = subprocess.run([sys.executable, "-c", _GEVENT_SCRIPT], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok"), done.stdout
    assert not done.stderr.strip(), done.stderr[-3000:]


def test_janus_is_used_in_one_module_through_public_names_only() -> None:
    """Only _janus_queue.py imports janus; it subclasses nothing of it and reads no ``_``
    member of a janus object (the queue ``self._q`` and its two faces)."""
    importers, private = [], []
    for path in sorted((REPO / "legacy_bridge").glob("*.py")) + sorted(
            (REPO / "migration").glob("*.py")) + sorted((REPO / "async_core").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                    node.module or ""]
                if any(n == "janus" or n.startswith("janus.") for n in names):
                    importers.append(path.name)
            if path.name != "_janus_queue.py":
                continue
            if isinstance(node, ast.ClassDef) and node.bases:
                private += [f"class {node.name}({ast.unparse(b)})" for b in node.bases
                            if "Generic" not in ast.unparse(b) and "NamedTuple" not in
                            ast.unparse(b) and "Exception" not in ast.unparse(b)]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                owner = ast.unparse(node.value)
                if owner.startswith("self._q") or owner.startswith("janus"):
                    private.append(ast.unparse(node))
    assert importers == ["_janus_queue.py"]
    assert private == []
