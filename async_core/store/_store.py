"""The store: conversations, checkpointed transcripts and the webhook outbox.

Every method is one short transaction on the async engine. The transcript of a
stream and its webhook deliveries are written by :meth:`Store.write` in ONE
transaction (the transactional outbox): a delivery exists only if the final
transcript does, and a committed final transcript always has its deliveries.
"""

from __future__ import annotations

import functools
import os
import re
import sqlite3
import time
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from . import _sqlite_batch
from ._schema import conversations, turns, webhook_endpoints, webhook_outbox

IN_PROGRESS = "in_progress"
WRITE_SLICE = 4  # snapshots per statement execution in Store.write (PostgreSQL)
TRANSACTION_BYTES = 4 << 20  # transcript text per SQLite transaction (at least 1 snapshot)
# A lone surrogate (U+D800..U+DFFF) is a valid str and valid JSON ("\ud800") but not
# encodable as UTF-8: neither SQLite nor PostgreSQL can store it (issue 10).
_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A stream's transcript at one moment: a checkpoint, or its final state."""

    stream_id: str
    conversation_id: str
    tenant: str
    agent: str
    messages: tuple[Mapping[str, str], ...]  # the turn(s) this stream was asked
    text: str  # the assistant's text so far
    tokens: int
    outcome: str  # in_progress, completed, interrupted, failed
    reason: str | None = None
    writer: str | None = None
    deliveries: tuple[Mapping[str, Any], ...] = field(default=())  # outbox rows

    @property
    def final(self) -> bool:
        """Whether this is the stream's last word (no later checkpoint may win)."""
        return self.outcome != IN_PROGRESS


class Store:
    """Queries and writes over one async engine.

    Args:
        engine: the engine, created on the loop that uses it.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        ins = self._insert = (
            postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)
        # The write path's statements, built once and run with parameter lists: each
        # execution then reuses one compiled form instead of building and compiling a
        # statement per checkpoint (a third of a busy server's CPU, measured).
        self._new_conversation = ins(conversations).on_conflict_do_nothing(
            index_elements=["id"])
        self._touch = update(conversations).where(
            conversations.c.id == bindparam("cid")).values(updated_at=bindparam("now"))
        upsert = ins(turns)
        self._upsert_turns = upsert.on_conflict_do_update(
            index_elements=["stream_id", "position"],
            set_={c: upsert.excluded[c] for c in (
                "outcome", "reason", "writer", "updated_at", "content", "tokens")},
            # A checkpoint never overwrites a final transcript (they may race in a batch).
            where=turns.c.outcome == IN_PROGRESS)
        self._new_deliveries = ins(webhook_outbox).on_conflict_do_nothing(
            index_elements=["id"])
        self._update_text = update(turns).where(
            turns.c.stream_id == bindparam("b_stream"), turns.c.position == bindparam("b_pos"),
            turns.c.outcome == IN_PROGRESS).values(
            content=bindparam("b_content"), tokens=bindparam("b_tokens"),
            writer=bindparam("b_writer"), updated_at=bindparam("b_now"))

    # -- conversations --------------------------------------------------------------

    async def history(self, conversation_id: str, tenant: str) -> list[dict[str, Any]] | None:
        """The turns of a conversation, oldest first; None if unknown or another tenant's."""
        async with self.engine.connect() as conn:
            owner = await conn.scalar(select(conversations.c.tenant).where(
                conversations.c.id == conversation_id))
            if owner is None or owner != tenant:
                return None
            rows = await conn.execute(
                select(turns).where(turns.c.conversation_id == conversation_id)
                .order_by(turns.c.id))
            return [_turn(dict(r._mapping)) for r in rows]

    async def claim_many(self, claims: Mapping[str, str]) -> dict[str, str]:
        """Create each conversation of ``claims`` (id -> tenant) unless it exists.

        One short transaction for the whole group (the writer batches the claims of
        every stream that opened since its last commit).

        Returns:
            The owner of each id: the claimant's tenant, or whoever had it first.
        """
        if not claims:
            return {}
        now = time.time()
        if self._sqlite:
            return await _sqlite_batch.run(
                self.engine, lambda db: _sqlite_batch.claim(db, claims, now))
        async with self.engine.begin() as conn:
            await conn.execute(self._new_conversation, [
                {"id": cid, "tenant": tenant, "created_at": now, "updated_at": now}
                for cid, tenant in claims.items()])
            rows = await conn.execute(select(conversations.c.id, conversations.c.tenant)
                                      .where(conversations.c.id.in_(list(claims))))
            return {cid: tenant for cid, tenant in rows}

    # -- transcripts and outbox -----------------------------------------------------

    async def write(self, snapshots: Sequence[Snapshot],
                    stored: Container[str] = frozenset()) -> None:
        """Write checkpoints and final transcripts (with their deliveries) atomically.

        ``stored``: the streams whose rows a committed write created. A checkpoint
        of one of them updates its answer's row only: rewriting the asked turns and
        the conversation row at every checkpoint doubled the writer's work (their
        values change with the final transcript only).

        One transaction. On SQLite it is one call in the connection's thread
        (``_sqlite_batch``: one loop round trip, however many snapshots), and one
        per ``TRANSACTION_BYTES`` of text: SQLite keeps a transaction's pages in
        memory, and the final transcripts of 50 streams of 3 MB in one transaction
        cost 100 MB of peak RSS (each snapshot stays atomic with its deliveries;
        re-writing one that was committed is a no-op upsert). On
        PostgreSQL its statements run once per slice of ``WRITE_SLICE`` snapshots,
        with every row of the slice (checkpoints arrive by the hundred per second):
        preparing a statement's parameters runs on the loop, so a slice bounds how
        long the streams on that loop wait for it.
        """
        if not snapshots:
            return
        now = time.time()
        if self._sqlite:
            for part in _by_size(snapshots, TRANSACTION_BYTES):
                await _sqlite_batch.run(self.engine, functools.partial(
                    _write_sqlite, part, now, stored))
            return
        deliveries = _delivery_rows(snapshots)
        texts = [s for s in snapshots if _text_only(s, stored)]
        snapshots = [s for s in snapshots if not _text_only(s, stored)]
        async with self.engine.begin() as conn:
            if texts:
                await conn.execute(self._update_text, [
                    {"b_stream": s.stream_id, "b_pos": len(s.messages),
                     "b_content": storable(s.text), "b_tokens": s.tokens,
                     "b_writer": s.writer, "b_now": now} for s in texts])
            for i in range(0, len(snapshots), WRITE_SLICE):
                part = snapshots[i:i + WRITE_SLICE]
                conversation_rows = [{"id": c[0], "tenant": c[1], "created_at": now,
                                      "updated_at": now}
                                     for c in _conversation_rows(part, now).values()]
                await conn.execute(self._new_conversation, conversation_rows)
                await conn.execute(self._touch, [{"cid": c["id"], "now": now}
                                                 for c in conversation_rows])
                await conn.execute(self._upsert_turns,
                                   [row for snap in part for row in _turn_rows(snap, now)])
            if deliveries:
                disabled = {row[0] for row in await conn.execute(
                    select(webhook_endpoints.c.url).where(
                        webhook_endpoints.c.disabled_at.is_not(None)))}
                deliveries = [d for d in deliveries if d["url"] not in disabled]
                if deliveries:
                    await conn.execute(self._new_deliveries, deliveries)

    async def recover(self, host: str) -> int:
        """Mark checkpoints of dead writers on this host ``interrupted``; return how many."""
        async with self.engine.begin() as conn:
            writers = [w for (w,) in await conn.execute(
                select(turns.c.writer).where(turns.c.outcome == IN_PROGRESS,
                                             turns.c.writer.like(f"{host}:%")).distinct())]
            dead = [w for w in writers if not _alive(int(w.rsplit(":", 1)[1]))]
            if not dead:
                return 0
            result = await conn.execute(update(turns).where(
                turns.c.outcome == IN_PROGRESS, turns.c.writer.in_(dead)).values(
                outcome="interrupted", reason="crashed", writer=None, updated_at=time.time()))
            return result.rowcount

    async def interrupt(self, stream_ids: Sequence[str]) -> int:
        """Mark the checkpoints of ``stream_ids`` ``interrupted``; return how many rows.

        For streams a sweeper ended in the shared stream log because their owner died,
        whatever host it ran on: the transcript keeps its last checkpoint's text. A
        final transcript is never touched (only ``in_progress`` rows change), so a
        late final write of a frozen owner is refused as its log appends were.
        """
        if not stream_ids:
            return 0
        async with self.engine.begin() as conn:
            result = await conn.execute(update(turns).where(
                turns.c.outcome == IN_PROGRESS, turns.c.stream_id.in_(list(stream_ids)))
                .values(outcome="interrupted", reason="crashed", writer=None,
                        updated_at=time.time()))
            return result.rowcount

    # -- webhook delivery -----------------------------------------------------------

    async def register_endpoints(self, urls: Sequence[str]) -> set[str]:
        """Record the configured endpoints; return those that 410 Gone disabled."""
        async with self.engine.begin() as conn:
            for url in urls:
                await conn.execute(self._insert(webhook_endpoints).values(url=url)
                                   .on_conflict_do_nothing(index_elements=["url"]))
            return {u for (u,) in await conn.execute(select(webhook_endpoints.c.url).where(
                webhook_endpoints.c.disabled_at.is_not(None)))}

    async def claim_due(self, now: float, lease: float, limit: int = 16) -> list[dict[str, Any]]:
        """Lease up to ``limit`` due deliveries to this worker (others skip leased rows)."""
        o = webhook_outbox.c
        free = or_(o.lease_until.is_(None), o.lease_until < now)
        async with self.engine.begin() as conn:
            rows = (await conn.execute(select(webhook_outbox).where(
                o.status == "pending", o.next_attempt_at <= now, free)
                .order_by(o.next_attempt_at).limit(limit))).mappings().all()
            claimed = []
            for row in rows:  # optimistic claim: works on SQLite and PostgreSQL alike
                res = await conn.execute(update(webhook_outbox).where(
                    and_(o.id == row["id"], o.status == "pending", free))
                    .values(lease_until=now + lease))
                if res.rowcount == 1:
                    claimed.append(dict(row))
            return claimed

    async def next_due(self) -> float | None:
        """When the next pending delivery is due (None: none pending)."""
        async with self.engine.connect() as conn:
            value = await conn.scalar(select(func.min(webhook_outbox.c.next_attempt_at))
                                      .where(webhook_outbox.c.status == "pending"))
            return None if value is None else float(value)

    async def settle(self, delivery_id: str, **values: Any) -> None:
        """Record an attempt's result on a delivery and release its lease."""
        async with self.engine.begin() as conn:
            await conn.execute(update(webhook_outbox).where(webhook_outbox.c.id == delivery_id)
                               .values(lease_until=None, **values))

    async def disable_endpoint(self, url: str, reason: str) -> None:
        """410 Gone: disable ``url`` and stop its pending deliveries."""
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(self._insert(webhook_endpoints).values(url=url)
                               .on_conflict_do_nothing(index_elements=["url"]))
            await conn.execute(update(webhook_endpoints).where(webhook_endpoints.c.url == url)
                               .values(disabled_at=now, disabled_reason=reason))
            await conn.execute(update(webhook_outbox).where(
                webhook_outbox.c.url == url, webhook_outbox.c.status == "pending")
                .values(status="disabled", finished_at=now, lease_until=None))

    async def deliveries(self) -> list[dict[str, Any]]:
        """Every delivery, oldest first (for tests, scripts and operators)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(webhook_outbox).order_by(webhook_outbox.c.created_at))
            return [dict(r) for r in rows.mappings()]


def _turn(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"role": row["role"], "content": row["content"], "outcome": row["outcome"],
            "reason": row["reason"], "stream_id": row["stream_id"], "agent": row["agent"],
            "tokens": row["tokens"], "created_at": row["created_at"],
            "updated_at": row["updated_at"]}


def _alive(pid: int) -> bool:
    # recover() runs at start-up, before this process wrote anything: a checkpoint
    # carrying our own pid is from a dead predecessor (containers reuse pids).
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed worker whose parent died too may linger as a zombie nobody reaps
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _conversation_rows(snapshots: Sequence[Snapshot],
                       now: float) -> dict[str, tuple[str, str, float, float]]:
    """(id, tenant, created_at, updated_at) of each conversation of ``snapshots``."""
    return {s.conversation_id: (s.conversation_id, s.tenant, now, now) for s in snapshots}


def _text_only(snap: Snapshot, stored: Container[str]) -> bool:
    """Whether ``snap`` is a checkpoint whose rows exist: only its text is written."""
    return not snap.final and snap.stream_id in stored


def _write_sqlite(snapshots: Sequence[Snapshot], now: float, stored: Container[str],
                  db: sqlite3.Connection) -> None:
    """The rows of ``snapshots``, built and written in the connection's thread."""
    full = [s for s in snapshots if not _text_only(s, stored)]
    _sqlite_batch.write(db, _conversation_rows(full, now).values(),
                        [row for snap in full for row in _turn_rows(snap, now)],
                        _delivery_rows(full),
                        [(storable(s.text), s.tokens, s.writer, now, s.stream_id,
                          len(s.messages)) for s in snapshots if _text_only(s, stored)])


def _by_size(snapshots: Sequence[Snapshot], most: int) -> Iterator[Sequence[Snapshot]]:
    """``snapshots`` in consecutive groups of at most ``most`` characters of text each."""
    start, size = 0, 0
    for i, snap in enumerate(snapshots):
        if i > start and size + len(snap.text) > most:
            yield snapshots[start:i]
            start, size = i, 0
        size += len(snap.text)
    yield snapshots[start:]


def _delivery_rows(snapshots: Sequence[Snapshot]) -> list[dict[str, Any]]:
    """The outbox rows of ``snapshots``, their text made storable."""
    return [{k: storable(v) if isinstance(v, str) else v for k, v in d.items()}
            for snap in snapshots for d in snap.deliveries]


def _turn_rows(snap: Snapshot, now: float) -> list[dict[str, Any]]:
    """The turns rows of one snapshot: the messages it was asked, then the answer."""
    common = {"conversation_id": snap.conversation_id, "stream_id": snap.stream_id,
              "outcome": snap.outcome, "reason": snap.reason, "agent": snap.agent,
              "writer": None if snap.final else snap.writer, "created_at": now,
              "updated_at": now}
    rows = [{**common, "position": i, "role": m.get("role", "user"),
             "content": storable(m.get("content", "")), "tokens": 0}
            for i, m in enumerate(snap.messages)]
    rows.append({**common, "position": len(snap.messages), "role": "assistant",
                 "content": storable(snap.text), "tokens": snap.tokens})
    return rows


def storable(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (the rest unchanged).

    Chosen over ``surrogatepass``: that would write bytes that are not UTF-8, which
    PostgreSQL refuses and every reader of the SQLite file would choke on; a stored
    transcript must be readable text. ASCII text (the common case) costs one
    ``isascii`` scan, no copy.
    """
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub(REPLACEMENT, text)
