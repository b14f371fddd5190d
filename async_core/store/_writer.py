"""The transcript writer: the two tasks of a process that write to the store.

Streams hand it snapshots and never wait for the database: ``submit`` is
synchronous and O(1) (a newer checkpoint replaces an unwritten older one; a final
snapshot is never replaced). Admission hands it conversation claims (``claim``)
and waits for the answer. Two lanes, each one task: the claims lane commits every
pending claim in one short transaction, the snapshots lane every pending snapshot
in one more. A burst of 200 streams is a few commits, not 200 transactions queueing
for SQLite's one write lock (issue 10, item 9: that queue, held across loop turns
of a saturated loop, ran past the busy timeout and answered 500 ``database is
locked``); and a claim, which a client waits for, never waits for a snapshot batch
(on SQLite both lanes' transactions are one thread hop each, see ``_sqlite_batch``,
so they hold the lock for milliseconds and the busy timeout orders them). The
snapshots lane commits at most once a ``tick`` (a quarter checkpoint interval, see
``_persistence.commit_tick``): the checkpoints of every stream in that window share
one commit; ``flush`` skips the wait. Once a stream's rows are committed, its later
checkpoints rewrite the answer's row only (``Store.write``'s ``stored``).

Failures, which never block the other rows (issue 10, item 1):

- *transient* (the database is locked, unreachable, restarting): the whole batch is
  put back and retried with backoff, for as long as it takes;
- *a row the database refuses*: the batch is bisected until the refused snapshot
  is alone (every other row is committed), which is retried ``MAX_ATTEMPTS`` times
  and then dead-lettered: one ERROR log line with its ids, and the metric
  ``streambridge_transcripts_dead_lettered_total``. Later checkpoints of that
  stream are dropped; its final transcript gets its own attempts.

``flush`` waits until everything submitted before it is committed or
dead-lettered, and ``aclose`` (graceful shutdown) flushes before it stops.

States: RUNNING ──aclose()──► FLUSHING ──pending empty or timeout──► CLOSED
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy import exc

from .. import _metrics as metrics
from .._tasks import cancel_and_wait
from ._store import Snapshot, Store

log = logging.getLogger("streambridge.store")
RETRY_MAX = 5.0
MAX_ATTEMPTS = 3  # tries of a snapshot the database refuses, before its dead letter
# sqlite3's own errors reach us unwrapped from _sqlite_batch.
TRANSIENT = (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError,
             exc.TimeoutError, OSError, sqlite3.OperationalError, sqlite3.InterfaceError)
Claim = tuple[str, str, "asyncio.Future[str]"]  # conversation id, tenant, its owner


def transient(error: BaseException) -> bool:
    """Whether ``error`` says the database (not the row) failed: retry, never give up."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, TRANSIENT)


class TranscriptWriter:
    """One background task that commits claims and snapshots in batches.

    Args:
        store: where to write.
        on_final: called after a commit that wrote final transcripts (wakes the
            webhook worker: their deliveries are now in the outbox).
        tick: the least time between two snapshot commits (seconds): every
            checkpoint filed meanwhile goes in the next one. ``flush`` and
            ``aclose`` never wait for it.
    """

    def __init__(self, store: Store, on_final: Callable[[], None] | None = None, *,
                 tick: float = 0.0) -> None:
        self._store, self._on_final, self._tick = store, on_final, tick
        self._pending: dict[str, Snapshot] = {}
        self._writing: dict[str, Snapshot] = {}  # the batch being committed
        self._claims: list[Claim] = []
        self._attempts: dict[str, int] = {}  # stream id -> refused writes so far
        self._dead: set[str] = set()  # dead-lettered streams still running
        self._stored: set[str] = set()  # running streams whose rows a commit created
        self._submitted = 0  # generation of the newest submitted snapshot
        self._written = 0  # every generation up to this one is committed
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._claimed = asyncio.Event()  # wakes the claims lane
        self._urgent = asyncio.Event()  # someone waits (flush): skip the tick
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._claims_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background tasks (snapshots, claims) on the running loop."""
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="sb-writer")
        self._claims_task = loop.create_task(self._run_claims(), name="sb-claims")

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
        if snap.stream_id in self._dead:
            if not snap.final:
                return  # its checkpoints were refused: wait for the final transcript
            self._dead.discard(snap.stream_id)
            self._attempts.pop(snap.stream_id, None)
        self._pending[snap.stream_id] = snap
        self._submitted += 1
        self._wake.set()

    async def claim(self, conversation_id: str, tenant: str) -> str:
        """Create the conversation for ``tenant`` unless it exists; return its owner.

        Waits for the claims lane's next pass (one transaction for every claim
        pending), which never waits for a snapshot batch to be written first.
        """
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._claims.append((conversation_id, tenant, future))
        self._claimed.set()
        return await future

    async def flush(self, within: float | None = None) -> bool:
        """Wait until everything submitted so far is written (False after ``within`` s)."""
        target = self._submitted
        self._urgent.set()
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
        tasks = [t for t in (self._task, self._claims_task) if t is not None]
        self._task = self._claims_task = None
        for task in tasks:
            await cancel_and_wait(task)

    async def _run(self) -> None:
        await self._lane(self._wake, self._commit_snapshots, self._tick, self._urgent)

    async def _run_claims(self) -> None:
        await self._lane(self._claimed, self._commit_claims)

    @staticmethod
    async def _lane(wake: asyncio.Event, commit: Callable[[], Awaitable[bool]],
                    tick: float = 0.0, urgent: asyncio.Event | None = None) -> None:
        """Commit whenever ``wake`` is set, at most once a ``tick`` unless ``urgent``;
        after a failed pass, retry with backoff."""
        loop = asyncio.get_running_loop()
        delay, last = 0.05, -math.inf
        while True:
            await wake.wait()
            pause = last + tick - loop.time()
            if pause > 0 and urgent is not None and not urgent.is_set():
                # Each commit costs the same whether it holds 1 checkpoint or 100
                # (the thread hop, BEGIN/COMMIT, the WAL frames of shared pages): the
                # streams' checkpoints of one tick share one (issue 16, item 5).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await urgent.wait()
            if urgent is not None:
                urgent.clear()
            last = loop.time()
            wake.clear()
            if await commit():
                delay = 0.05
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            wake.set()

    async def _commit_claims(self) -> bool:
        claims, self._claims = [c for c in self._claims if not c[2].done()], []
        if not claims:
            return True
        wanted: dict[str, str] = {}
        for cid, tenant, _ in claims:
            wanted.setdefault(cid, tenant)  # the first claimant of a pass wins
        try:
            owners = await self._store.claim_many(wanted)
        except Exception as error:
            if transient(error):
                metrics.store_retry("transient")
                log.warning("claiming %d conversation(s) failed (%s); retrying", len(wanted),
                            _brief(error))
                self._claims[:0] = claims
                return False
            for *_, future in claims:
                if not future.done():
                    future.set_exception(error)
            return True
        for cid, _, future in claims:
            if not future.done():
                future.set_result(owners.get(cid, ""))
        return True

    async def _commit_snapshots(self) -> bool:
        """Commit the pending batch; False when something must be retried after a pause."""
        if not self._pending:
            return True
        batch, generation = self._pending, self._submitted
        self._pending, self._writing = {}, batch
        committed: list[Snapshot] = []
        try:
            failed = await self._write(list(batch.values()), committed)
        finally:
            self._writing = {}
        retry = False
        if failed and transient(failed[0][1]):  # one line per pass, not one per stream
            log.warning("writing %d transcript(s) failed (%s); retrying", len(failed),
                        _brief(failed[0][1]))
        for snap, error in failed:
            if self._give_up(snap, error):
                continue
            self._pending.setdefault(snap.stream_id, snap)  # unless something newer came
            retry = True
        for snap in committed:
            self._attempts.pop(snap.stream_id, None)
            if snap.final:
                self._stored.discard(snap.stream_id)
            else:
                self._stored.add(snap.stream_id)
        if not retry:
            if not self._pending:
                generation = self._submitted
            async with self._changed:
                self._written = max(self._written, generation)
                self._changed.notify_all()
        if self._on_final is not None and any(s.final for s in committed):
            self._on_final()
        return not retry

    async def _write(self, snaps: Sequence[Snapshot],
                     committed: list[Snapshot]) -> list[tuple[Snapshot, BaseException]]:
        """Write ``snaps``; bisect a refused batch. Returns what failed, and why."""
        try:
            await self._store.write(snaps, self._stored)
        except Exception as error:
            if len(snaps) == 1 or transient(error):
                return [(snap, error) for snap in snaps]
            mid = len(snaps) // 2
            return [*await self._write(snaps[:mid], committed),
                    *await self._write(snaps[mid:], committed)]
        committed.extend(snaps)
        return []

    def _give_up(self, snap: Snapshot, error: BaseException) -> bool:
        """Count a failed write of ``snap``; dead-letter it after ``MAX_ATTEMPTS``."""
        if transient(error):
            metrics.store_retry("transient")
            return False
        attempts = self._attempts[snap.stream_id] = self._attempts.get(snap.stream_id, 0) + 1
        if attempts < MAX_ATTEMPTS:
            metrics.store_retry("refused")
            log.debug("the store refused the transcript of stream %s (%s); attempt %d of %d",
                      snap.stream_id, _brief(error), attempts, MAX_ATTEMPTS)
            return False
        self._attempts.pop(snap.stream_id, None)
        if not snap.final:
            self._dead.add(snap.stream_id)
        else:
            self._stored.discard(snap.stream_id)
        metrics.transcript_dead_lettered("final" if snap.final else "checkpoint")
        log.error("dead letter: transcript of stream %s (conversation %s, tenant %s, %s, "
                  "%d chars, %d webhook deliveries) refused %d times, dropped: %s",
                  snap.stream_id, snap.conversation_id, snap.tenant, snap.outcome,
                  len(snap.text), len(snap.deliveries), attempts, _brief(error))
        return True


def _brief(error: BaseException) -> str:
    """One line naming ``error`` (no traceback: the log line is the record)."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text[:200]}"
