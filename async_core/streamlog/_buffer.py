"""One stream's entries in this process: a bounded buffer that several readers follow.

The memory backend keeps each stream in one; the Redis backend keeps each stream this
process owns in one as well, so local readers follow it with no round trip (and keep
following while Redis is down). Invariant: entry positions increase; when the buffer
is full the oldest entry is dropped and ``max_dropped`` remembers it, so a cursor at or
before it gets an explicit ``Reset("trimmed")``.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator

from ._ids import EventId
from ._types import Entry, ReadItem, Reset


class StreamBuffer:
    """A bounded, followable run of entries of one stream.

    Args:
        epoch: the epoch the entries were written in.
        maxlen: most entries kept.
    """

    def __init__(self, epoch: str, maxlen: int) -> None:
        self.epoch = epoch
        self.maxlen = maxlen
        self._list: list[Entry] = []
        self._head = 0  # index in _list of the oldest kept entry
        self._base = 0  # absolute number of _list[0] (entries ever dropped before it)
        self.max_dropped: tuple[int, int] | None = None
        self.terminal: Entry | None = None
        self._changed = asyncio.Event()
        self._waited = False  # a reader waits on _changed (else add() need not swap it)

    def __len__(self) -> int:
        return len(self._list) - self._head

    def add(self, entry: Entry) -> None:
        """Append one entry (positions must increase) and wake the followers."""
        if len(self) and entry.id.position <= self._list[-1].id.position:
            raise ValueError("entry positions must increase")
        self._list.append(entry)
        if len(self) > self.maxlen:
            self.max_dropped = self._list[self._head].id.position
            self._head += 1
            if self._head >= self.maxlen:  # compact: amortised O(1) per entry
                del self._list[:self._head]
                self._base += self._head
                self._head = 0
        if entry.terminal:
            self.terminal = entry
        if self._waited:  # an Event per add cost the producer ~2 us a token (measured)
            self._waited = False
            self._changed.set()
            self._changed = asyncio.Event()

    def last_position(self) -> tuple[int, int] | None:
        """The position of the newest entry, if any."""
        return self._list[-1].id.position if len(self) else None

    def _first_after(self, pos: tuple[int, int] | None) -> int:
        """The absolute number of the first kept entry after ``pos``."""
        kept = self._list[self._head:]
        i = 0 if pos is None else bisect.bisect_right(kept, pos, key=lambda e: e.id.position)
        return self._base + self._head + i

    async def read(self, cursor: EventId | None) -> AsyncIterator[ReadItem]:
        """Yield the entries after ``cursor``, then follow until the terminal entry.

        A cursor of another epoch, or one the buffer dropped entries after, first yields
        a ``Reset``; the read then goes on from the oldest entry kept.
        """
        pos = None if cursor is None else cursor.position
        if cursor is not None and cursor.epoch != self.epoch:
            yield Reset("epoch")
            pos = None
        if self.max_dropped is not None and (pos is None or pos < self.max_dropped):
            yield Reset("trimmed")
            pos = None
        nxt = self._first_after(pos)
        while True:
            oldest = self._base + self._head
            if nxt < oldest:  # this reader fell behind the buffer
                yield Reset("trimmed")
                nxt = oldest
            changed = self._changed
            end = self._base + len(self._list)
            if nxt == end:
                if self.terminal is not None:  # a cursor at the terminal entry: nothing follows
                    return
                self._waited = True
                await changed.wait()
                continue
            for entry in self._list[nxt - self._base:end - self._base]:
                nxt += 1
                yield entry
                if entry.terminal:
                    return
