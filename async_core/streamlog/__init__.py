"""The stream log: every event of every stream, readable from a cursor (issue 13).

A *run* appends, the *log* keeps what it produced (terminal entry included), a
*subscription* reads from a cursor. Two backends behind one interface,
``StreamLog``: ``MemoryLog`` (one process, the embedded default) and ``RedisLog``
(Redis Streams, every worker and host). See README.md in this folder.

The Redis backend is imported lazily, so the memory backend loads no Redis client;
so is the sync producer (``Publisher``, ``publish_agent``: code outside the web
server, e.g. a Celery task, publishing a stream into the Redis log).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._buffer import StreamBuffer
from ._ids import MAX_CURSOR_LENGTH, START, EventId, decode_cursor, encode_id, new_epoch
from ._memory import INTERRUPTED, MemoryLog
from ._settings import LogSettings
from ._types import (
    TERMINAL_EVENTS,
    CancelResult,
    Entry,
    Lease,
    ReadItem,
    Reset,
    StreamLog,
    StreamMeta,
)
from .exceptions import (
    CursorError,
    CursorTooLong,
    ForeignCursor,
    LogUnavailable,
    MalformedCursor,
    StaleOwner,
    StreamCancelled,
    StreamClosed,
    StreamExists,
    StreamLogError,
    StreamNotFound,
)

if TYPE_CHECKING:
    from ._publisher import Publisher
    from ._redis import RedisLog
    from ._stream import PublishedStream
    from ._sync_agent import publish_agent

_LAZY = {"RedisLog": "_redis", "Publisher": "_publisher", "PublishedStream": "_stream",
         "publish_agent": "_sync_agent"}


async def open_log(settings: LogSettings, **kw: Any) -> StreamLog:
    """Open the log the settings name: Redis when ``redis_url`` is set, else memory.

    Args:
        settings: the log settings (from the environment: ``Settings.from_env().log``).
        **kw: passed to the backend (``owner=``, and ``sweeper=`` for Redis).

    Raises:
        LogUnavailable: Redis is unreachable (the message names ``STREAMBRIDGE_REDIS_URL``).
    """
    if settings.redis_url:
        from ._redis import RedisLog

        return await RedisLog.open(settings, **kw)
    return MemoryLog(settings, **kw)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "INTERRUPTED",
    "MAX_CURSOR_LENGTH",
    "START",
    "TERMINAL_EVENTS",
    "CancelResult",
    "CursorError",
    "CursorTooLong",
    "Entry",
    "EventId",
    "ForeignCursor",
    "Lease",
    "LogSettings",
    "LogUnavailable",
    "MalformedCursor",
    "MemoryLog",
    "PublishedStream",
    "Publisher",
    "ReadItem",
    "RedisLog",
    "Reset",
    "StaleOwner",
    "StreamBuffer",
    "StreamCancelled",
    "StreamClosed",
    "StreamExists",
    "StreamLog",
    "StreamLogError",
    "StreamMeta",
    "StreamNotFound",
    "decode_cursor",
    "encode_id",
    "new_epoch",
    "open_log",
    "publish_agent",
]
