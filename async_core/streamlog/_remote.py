"""Followers in this process of one stream that another process owns.

All followers of a stream share one key of the process' ``Multiplexer``; each keeps
its own position and drops what it has already seen, so a follower that joins late
first catches up with ``XRANGE`` from its replay position to where the multiplexer is,
then takes live entries: no gap, no repeat. After a reconnection the owner checks the
log's epoch; a recreated log resets the followers explicitly and they read it from
its start. Ids are dense (``fence-1``, ``fence-2``, ...), so the multiplexer's entries
must follow one another: one that does not (the owner dropped entries past
``redis_max_buffered`` and started the log anew, which ``XREAD`` from the last id cannot
tell, or ``MAXLEN`` trimmed entries this process never read) resets the followers too
(``epoch`` if the log's epoch changed, else ``trimmed``): never a silent gap.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from . import _scripts as S
from ._ids import EventId, parse_native
from ._types import Entry, ReadItem, Reset
from .exceptions import StreamNotFound

if TYPE_CHECKING:
    from ._redis import RedisLog

Raw = list[tuple[bytes, list[bytes]]]  # (id, [event, JSON data]) as XREAD sends them
Item = tuple[str, Raw] | Reset  # what a follower's queue carries: (epoch, entries) or a reset
PAGE = 1000


def follows(last: tuple[int, int], first: tuple[int, int]) -> bool:
    """Whether ``first`` is the id right after ``last`` (the append script's gap rule)."""
    return (last == (0, 0) and first[1] == 1) or (first[0] == last[0]
                                                   and first[1] == last[1] + 1)


def to_entry(eid: EventId, event: str, data: Mapping[str, Any] | bytes) -> Entry:
    """Build an entry from a local append (a mapping) or a Redis field (JSON bytes)."""
    return Entry(eid, event, json.loads(data) if isinstance(data, bytes) else dict(data))


def _entry(epoch: str, position: tuple[int, int], flat: list[bytes]) -> Entry:
    """An entry read from Redis: ``flat`` is ``[event, JSON data]``; its id, made by the
    owner, is not re-validated (``EventId.made``)."""
    return Entry(EventId.made(epoch, *position), flat[0].decode(), json.loads(flat[1]))


class Remote:
    """The followers of one remotely owned stream.

    Args:
        stream_id: the stream.
        epoch: its log's epoch when the first follower opened it.
        owner: the backend (its multiplexer and command client).
    """

    def __init__(self, stream_id: str, epoch: str, owner: RedisLog) -> None:
        self.stream_id = stream_id
        self.epoch: str | None = epoch
        self._log = owner
        self._key = S.keys(stream_id)[0].encode()
        self._pos = b"0-0"  # the last id the multiplexer handed over
        self._subs: set[asyncio.Queue[Item]] = set()
        self._held: Raw = []  # entries waiting for the epoch of a recreated log
        self._fetching = False
        self._any_next = False  # after a reset: the next entry may have any id
        self._gap_epoch: str | None = None  # the epoch a gap was seen in (reset pending)

    def _on_entries(self, entries: Raw) -> None:
        last, self._pos = self._pos, entries[-1][0]
        any_next, self._any_next = self._any_next, False
        if (self.epoch is not None and not any_next
                and not follows(parse_native(last), parse_native(entries[0][0]))):
            # A gap (see the module docstring): reset once the log's epoch is known.
            self._gap_epoch, self.epoch = self.epoch, None
        if self.epoch is None:
            self._held.extend(entries)
            if not self._fetching:
                self._fetching = True
                asyncio.get_running_loop().create_task(self._fetch_epoch())
            return
        for q in self._subs:
            q.put_nowait((self.epoch, entries))

    async def _fetch_epoch(self) -> None:
        try:
            while self.epoch is None:
                raw: bytes | None = await self._log.client.hget(S.keys(self.stream_id)[1], "epoch")
                if raw is None:
                    await asyncio.sleep(self._log.settings.redis_retry)
                else:
                    self.epoch = raw.decode()
        finally:
            self._fetching = False
        if self._gap_epoch is not None:
            reset = Reset("epoch" if self.epoch != self._gap_epoch else "trimmed")
            self._gap_epoch = None
            for q in self._subs:
                q.put_nowait(reset)
        held, self._held = self._held, []
        if held:
            for q in self._subs:
                q.put_nowait((self.epoch, held))

    def check_epoch(self, epoch: str | None) -> None:
        """After a reconnection: reset the followers if the log was recreated or lost."""
        if epoch == self.epoch:
            return
        self.epoch = epoch
        self._pos = b"0-0"
        self._any_next = True  # a recreated log's first id may be any
        self._gap_epoch = None  # this reset stands for a gap seen meanwhile, too
        self._held = []  # the log is read again from its start
        self._log.mux.restart_key(self._key, b"0-0")
        for q in self._subs:
            q.put_nowait(Reset("epoch"))

    async def follow(self, pos: bytes) -> AsyncIterator[ReadItem]:
        """Yield live entries after ``pos`` (the follower's replay position)."""
        q: asyncio.Queue[Item] = asyncio.Queue()
        if not self._subs:
            self._pos = pos
            self._log.mux.follow(self._key, pos, self._on_entries)
        hub = self._pos
        self._subs.add(q)
        try:
            if parse_native(hub) > parse_native(pos) and self.epoch is not None:
                for native, flat in await self._log.xrange_after(self.stream_id, pos, hub):
                    entry = _entry(self.epoch, parse_native(native), flat)
                    yield entry
                    if entry.terminal:
                        return
                    pos = native
            seen = parse_native(pos)
            while True:
                item = await q.get()
                if isinstance(item, Reset):
                    yield item
                    seen = (0, 0)
                    continue
                epoch, entries = item
                for native, flat in entries:
                    position = parse_native(native)
                    if position <= seen:
                        continue
                    entry = _entry(epoch, position, flat)
                    yield entry
                    if entry.terminal:
                        return
                    seen = position
        finally:
            self._subs.discard(q)
            if not self._subs:
                self._log.mux.unfollow(self._key)
                self._log.forget_remote(self.stream_id)


async def replay_and_follow(log: RedisLog, k: tuple[str, str, str, str], stream_id: str,
                            cursor: EventId | None, tenant: str | None
                            ) -> AsyncIterator[ReadItem]:
    """Read a stream another process owns: ``OPEN`` (meta, reset check, first page),
    ``XRANGE`` pages, then live entries through the stream's ``Remote``."""
    res = await log.eval_script("OPEN", (k[1], k[0]), cursor.native if cursor else "",
                           cursor.epoch if cursor else "", PAGE)
    if res is None or (tenant is not None and res[0][0].decode() != tenant):
        raise StreamNotFound(f"no stream {stream_id!r}")
    epoch, reason, page = res[0][3].decode(), res[1].decode(), res[2]
    assert reason in ("", "epoch", "trimmed")
    pos = b"0-0"
    if reason:
        yield Reset(reason)
    elif cursor is not None:
        pos = cursor.native.encode()
    while True:  # replay, page by page
        for native, flat in page:
            entry = _entry(epoch, parse_native(native), flat)
            yield entry
            if entry.terminal:
                return
            pos = native
        if len(page) < PAGE:
            break
        page = await log.client.xrange(k[0], b"(" + pos, "+", count=PAGE)
    if res[0][2] != b"running":  # ended, and the cursor was at its terminal entry
        return
    async for item in log.remote(stream_id, epoch).follow(pos):
        yield item
