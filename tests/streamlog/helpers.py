"""Small helpers shared by the stream log tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from async_core.streamlog import Entry, ReadItem, Reset


async def collect(items: AsyncIterator[ReadItem], timeout: float = 10.0) -> list[ReadItem]:
    """Read until the iterator ends (the terminal entry), within ``timeout`` seconds."""
    out: list[ReadItem] = []

    async def run() -> None:
        async for item in items:
            out.append(item)

    await asyncio.wait_for(run(), timeout)
    return out


def texts(items: list[ReadItem]) -> list[str]:
    """The ``text`` of every delta entry, with ``RESET`` where a reset was."""
    return ["RESET" if isinstance(i, Reset) else str(i.data.get("text", i.event))
            for i in items if isinstance(i, Reset) or i.event in ("delta", "done", "error")]


def entries(items: list[ReadItem]) -> list[Entry]:
    """Only the entries."""
    return [i for i in items if isinstance(i, Entry)]
