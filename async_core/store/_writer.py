"""The transcript writer: streams hand it snapshots and never wait for the database.

``submit`` is synchronous and O(1): it files the snapshot under its stream id
(a newer checkpoint replaces an unwritten older one; a final snapshot is never
replaced), and one background task commits whatever is pending in one
transaction. Nothing is fire-and-forget: a failed commit is retried with backoff,
``flush`` waits until everything submitted before it is committed, and ``aclose``
(graceful shutdown) flushes before it stops.

States: RUNNING ──aclose()──► FLUSHING ──pending empty or timeout──► CLOSED
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .._tasks import cancel_and_wait
from ._store import Snapshot, Store

log = logging.getLogger("streambridge.store")
RETRY_MAX = 5.0


class TranscriptWriter:
    """One background task that commits snapshots in batches.

    Args:
        store: where to write.
        on_final: called after a commit that wrote final transcripts (wakes the
            webhook worker: their deliveries are now in the outbox).
    """

    def __init__(self, store: Store, on_final: Callable[[], None] | None = None) -> None:
        self._store, self._on_final = store, on_final
        self._pending: dict[str, Snapshot] = {}
        self._writing: dict[str, Snapshot] = {}  # the batch being committed
        self._submitted = 0  # generation of the newest submitted snapshot
        self._written = 0  # every generation up to this one is committed
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sb-writer")

    @property
    def backlog(self) -> int:
        """Streams with a snapshot not yet committed."""
        return len(self._pending)

    def pending_for(self, conversation_id: str) -> bool:
        """Whether a snapshot of ``conversation_id`` is not committed yet."""
        return any(s.conversation_id == conversation_id
                   for d in (self._pending, self._writing) for s in d.values())

    def submit(self, snap: Snapshot) -> None:
        """File ``snap`` for the next commit; returns at once (call on the loop)."""
        if self._closing and self._task is None:
            log.error("snapshot of stream %s submitted after close", snap.stream_id)
        old = self._pending.get(snap.stream_id)
        if old is not None and old.final and not snap.final:
            return  # the final transcript wins over a late checkpoint
        self._pending[snap.stream_id] = snap
        self._submitted += 1
        self._wake.set()

    async def flush(self, within: float | None = None) -> bool:
        """Wait until everything submitted so far is committed (False after ``within`` s)."""
        target = self._submitted
        try:
            async with asyncio.timeout(within):
                async with self._changed:
                    await self._changed.wait_for(lambda: self._written >= target)
        except TimeoutError:
            return False
        return True

    async def aclose(self, grace: float = 10.0) -> None:
        """Flush what is pending (up to ``grace`` seconds), then stop the task."""
        self._closing = True
        self._wake.set()
        if not await self.flush(grace):
            log.error("shutdown: %d transcript(s) could not be written within %.3g s",
                      len(self._pending), grace)
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        delay = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            batch, generation = self._pending, self._submitted
            self._pending, self._writing = {}, batch
            try:
                await self._store.write(list(batch.values()))
            except Exception:
                self._writing = {}
                log.exception("writing %d transcript(s) failed; retrying in %.3g s",
                              len(batch), delay)
                for sid, snap in batch.items():  # put back, unless something newer came
                    self._pending.setdefault(sid, snap)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                self._wake.set()
                continue
            delay, self._writing = 0.05, {}
            if not self._pending:
                generation = self._submitted
            async with self._changed:
                self._written = max(self._written, generation)
                self._changed.notify_all()
            if self._on_final is not None and any(s.final for s in batch.values()):
                self._on_final()
