"""Persistence for the stream service: what the engine's hooks write, and when.

One ``Persistence`` per process, created on the loop that runs the streams (the
ASGI lifespan, or the legacy bridge's loop thread) and closed there on shutdown,
which flushes the transcript writer before the engine is disposed. It gives:

- ``begin``: at ``StreamService.open``, before admission: claims the
  conversation for the tenant, new ones included (404 for another tenant's), and
  returns its turns, which are prepended to the agent's messages;
- ``progress``: the engine's checkpoint hook (every ``checkpoint_tokens`` tokens
  or ``checkpoint_interval`` seconds): files a snapshot, never waits;
- ``finish``: the finish hook: files the final transcript together with its
  webhook deliveries (one transaction), never waits.

Outcomes: ``completed`` stays ``completed``; ``agent_error`` (and ``rejected``)
are ``failed``; every other ending keeps its partial text as ``interrupted``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from .._records import Outcome, StreamInfo, StreamRecord
from .._settings import Settings
from ..exceptions import NotFound, Overloaded
from ..webhooks import DeliveryWorker, WebhookConfig, deliveries
from ._db import create_engine, database_url, is_sqlite, process_token
from ._migrate import ensure_current
from ._store import IN_PROGRESS, Snapshot, Store
from ._writer import TranscriptWriter

log = logging.getLogger("streambridge.store")
Messages = tuple[Mapping[str, str], ...]
MAX_TICK = 0.25  # seconds: a long checkpoint interval does not delay final transcripts more


def stored_outcome(outcome: Outcome) -> str:
    """The transcript status of a stream that ended with ``outcome``."""
    if outcome is Outcome.COMPLETED:
        return "completed"
    if outcome in (Outcome.AGENT_ERROR, Outcome.REJECTED):
        return "failed"
    return "interrupted"


def commit_tick(settings: Settings) -> float:
    """The least time between two checkpoint commits: a quarter checkpoint interval.

    A busy server commits at most four times an interval. Streams file their
    checkpoints a tick sooner than the interval (``StreamService``), so a SIGKILL still
    loses at most one checkpoint interval (plus one commit) of text.
    """
    return min(max(settings.checkpoint_interval, 0.0) / 4, MAX_TICK)


class Persistence:
    """Conversations, checkpoints, final transcripts and webhooks of one process.

    Use :meth:`open`; the constructor only wires the parts together.
    """

    claim_timeout = 5.0  # seconds admission waits for a claim (the admission timeout)

    def __init__(self, engine: AsyncEngine, webhooks: WebhookConfig | None, *,
                 tick: float = 0.0) -> None:
        self.engine = engine
        self.store = Store(engine)
        self.webhooks = webhooks
        self.worker = DeliveryWorker(self.store, webhooks) if webhooks else None
        self.writer = TranscriptWriter(self.store, self.worker.wake if self.worker else None,
                                       tick=tick)
        self.commit_tick = tick  # a filed checkpoint may wait this long for its commit
        self._streams: dict[str, tuple[str, Messages]] = {}
        self._writer_id = process_token()
        self._marking: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, settings: Settings) -> Persistence | None:
        """Connect, migrate (embedded SQLite) or check the schema, and start the workers.

        Returns None when persistence is off (``STREAMBRIDGE_DATABASE_URL=none``).

        Raises:
            StoreConfigError: bad URL, or a schema that needs ``streambridge db upgrade``.
            WebhookConfigError: bad webhook settings.
        """
        webhooks = WebhookConfig.from_settings(settings)  # refuse bad config before connecting
        url = database_url(settings)
        if url is None:
            if webhooks is not None:
                log.warning("webhooks need the store; STREAMBRIDGE_DATABASE_URL=none disables "
                            "them")
            return None
        engine = create_engine(url)
        try:
            await ensure_current(engine, auto=is_sqlite(url))
            self = cls(engine, webhooks, tick=commit_tick(settings))
            self.claim_timeout = max(settings.admission_timeout, 1.0)
            recovered = await self.store.recover(self._writer_id.rsplit(":", 1)[0])
            if recovered:
                log.warning("marked %d checkpointed turn(s) of crashed workers interrupted",
                            recovered)
            if webhooks is not None:
                await self.store.register_endpoints(webhooks.urls)
        except BaseException:
            await engine.dispose()
            raise
        self.writer.start()
        if self.worker is not None:
            self.worker.start()
        return self

    async def aclose(self, grace: float = 10.0) -> None:
        """Flush every pending transcript, stop the webhook worker, dispose the engine."""
        if self._marking:
            await asyncio.wait(self._marking, timeout=grace)
        await self.writer.aclose(grace)
        if self.worker is not None:
            await self.worker.aclose()
        await self.engine.dispose()

    def swept(self, stream_ids: list[str]) -> None:
        """The stream log's ``on_swept``: mark swept streams' transcripts ``interrupted``.

        A sweeper in any process ends the streams of a dead owner (another host, when
        the log is Redis); with one database shared by every host, the transcript is
        marked here from its last checkpoint instead of when the dead owner's store
        starts again (which may be never). Runs in a task of its own: the sweeper's
        heartbeat (which also renews this process' leases) never waits for the
        database; a failure is one log line (the owner's restart still recovers it).
        """
        task = asyncio.get_running_loop().create_task(self._interrupt(stream_ids))
        self._marking.add(task)
        task.add_done_callback(self._marking.discard)

    async def _interrupt(self, stream_ids: list[str]) -> None:
        try:
            marked = await self.store.interrupt(stream_ids)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("could not mark the transcripts of %d swept stream(s) interrupted: %s",
                        len(stream_ids), exc)
            return
        if marked:
            log.warning("marked the transcripts of %d swept stream(s) interrupted (%d rows)",
                        len(stream_ids), marked)

    # -- the service's hooks --------------------------------------------------------

    async def begin(self, stream_id: str, conversation_id: str, tenant: str,
                    messages: Messages, *, new: bool = False) -> Messages:
        """Claim the conversation and return its earlier turns as agent messages.

        A conversation belongs to the tenant that created it from before the first
        byte of its first stream, in every process sharing the database: a new one is
        claimed here (one writer pass, shared by every stream opening at that moment),
        never later by its first checkpoint (issue 10, item 6).

        Args:
            new: the server made the id up: no history to read, only the claim.

        Raises:
            NotFound: the conversation belongs to another tenant.
            Overloaded: the store could not record the claim within the admission
                timeout (503, retryable).
        """
        if new:
            await self._claim(conversation_id, tenant)
            self._streams[stream_id] = (tenant, messages)
            return ()
        if self.writer.pending_for(conversation_id):
            await self.writer.flush()  # the previous turn may still be on its way
        turns = await self.store.history(conversation_id, tenant)
        if turns is None:  # unknown (start it under this id) or another tenant's
            await self._claim(conversation_id, tenant)
            turns = []
        self._streams[stream_id] = (tenant, messages)
        return tuple({"role": t["role"], "content": t["content"]} for t in turns
                     if t["content"] or t["role"] != "assistant")

    async def _claim(self, conversation_id: str, tenant: str) -> None:
        try:
            async with asyncio.timeout(self.claim_timeout):
                owner = await self.writer.claim(conversation_id, tenant)
        except TimeoutError:
            raise Overloaded("the conversation store is not answering; retry shortly",
                             retry_after=1.0) from None
        if owner != tenant:
            raise NotFound(f"conversation {conversation_id!r} not found")

    def forget(self, stream_id: str) -> None:
        """The stream was never started (refused after ``begin``)."""
        self._streams.pop(stream_id, None)

    def progress(self, info: StreamInfo, text: str, tokens: int) -> None:
        """Checkpoint hook: file the partial transcript; returns at once."""
        ctx = self._streams.get(info.stream_id)
        if ctx is not None:
            self.writer.submit(self._snapshot(info, ctx, text, tokens, IN_PROGRESS, None))

    def finish(self, record: StreamRecord) -> None:
        """Finish hook: file the final transcript and its webhook deliveries."""
        info = record.info
        ctx = self._streams.pop(info.stream_id, None)
        if ctx is None:
            return
        outcome = stored_outcome(record.outcome)
        rows = (deliveries(record, tenant=ctx[0], outcome=outcome, urls=self.webhooks.urls)
                if self.webhooks else ())
        self.writer.submit(self._snapshot(info, ctx, record.text, record.tokens, outcome,
                                          record.outcome.value, rows))

    async def conversation(self, conversation_id: str, tenant: str) -> dict[str, Any] | None:
        """The stored conversation as the API returns it; None if unknown or foreign."""
        if self.writer.pending_for(conversation_id):
            await self.writer.flush()
        turns = await self.store.history(conversation_id, tenant)
        if turns is None:
            return None
        return {"id": conversation_id, "turns": turns}

    def _snapshot(self, info: StreamInfo, ctx: tuple[str, Messages], text: str, tokens: int,
                  outcome: str, reason: str | None,
                  rows: tuple[dict[str, Any], ...] = ()) -> Snapshot:
        return Snapshot(stream_id=info.stream_id, conversation_id=info.conversation_id,
                        tenant=ctx[0], agent=info.agent, messages=ctx[1], text=text,
                        tokens=tokens, outcome=outcome, reason=reason, writer=self._writer_id,
                        deliveries=rows)
