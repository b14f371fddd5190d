"""The writer's SQLite transactions, each run as ONE call in the connection's thread.

Through SQLAlchemy, every statement of a transaction is one round trip between the
event loop and aiosqlite's connection thread, and the write lock is held for all of
them. On a saturated loop (200 sync-agent streams on the hybrid front: each round
trip took about 0.3 s, measured) a transaction of 17 round trips held the lock for
over 5 s: checkpoints fell seconds behind the clients, and other writers timed out
with ``database is locked`` (issue 10, item 9). Here a whole transaction — ``BEGIN
IMMEDIATE`` (the write lock up front, so the busy timeout applies and no read ever
has to upgrade), multi-row statements, ``COMMIT`` — is one function run in that
thread: one round trip, however busy the loop.

This relies on ``aiosqlite.Connection._execute(fn)``, which runs ``fn`` in the
connection's thread (the primitive every aiosqlite method is built on; present
from 0.17 to 0.22, pinned by ``tests/store/test_writer_faults.py``). PostgreSQL keeps
the SQLAlchemy path: asyncpg has no thread to hop to.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")
TURN_COLUMNS = ("conversation_id", "stream_id", "position", "role", "content", "outcome",
                "reason", "agent", "tokens", "writer", "created_at", "updated_at")
_UPDATED = ("outcome", "reason", "writer", "updated_at", "content", "tokens")
UPSERT_TURNS = (
    f"INSERT INTO turns ({', '.join(TURN_COLUMNS)}) VALUES {{values}} "
    "ON CONFLICT (stream_id, position) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _UPDATED)
    # A checkpoint never overwrites a final transcript (they may race in a batch).
    + " WHERE turns.outcome = 'in_progress'")
UPSERT_CONVERSATIONS = (
    "INSERT INTO conversations (id, tenant, created_at, updated_at) VALUES {values} "
    "ON CONFLICT (id) DO UPDATE SET updated_at = excluded.updated_at")
NEW_CONVERSATIONS = ("INSERT INTO conversations (id, tenant, created_at, updated_at) "
                     "VALUES {values} ON CONFLICT (id) DO NOTHING")
# A later checkpoint of a stream whose rows are committed: its answer's text only (the
# asked turns and the conversation row do not change until the final transcript).
UPDATE_TEXT = ("UPDATE turns SET content = ?, tokens = ?, writer = ?, updated_at = ? "
               "WHERE stream_id = ? AND position = ? AND outcome = 'in_progress'")
STATEMENT_BYTES = 1 << 20
DISABLED = "SELECT url FROM webhook_endpoints WHERE disabled_at IS NOT NULL"


async def run(engine: AsyncEngine, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn(connection)`` in one transaction, in the thread of a pooled connection.

    Raises:
        sqlite3.Error: whatever ``fn`` or the commit raised (the transaction is
            rolled back).
    """
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection  # the aiosqlite.Connection
        return await driver._execute(_transaction, driver._conn, fn)  # type: ignore[no-any-return]


def _transaction(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    if db.in_transaction:
        db.rollback()
    db.execute("BEGIN IMMEDIATE")
    try:
        result = fn(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return result


def insert_rows(db: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """Run ``sql`` (with ``{values}``) as few multi-row statements as the limits allow.

    One statement for many rows, rather than ``executemany``: each statement
    execution releases and retakes the GIL, which a busy process makes costly. But
    SQLite copies every bound text, so a statement binds at most about
    ``STATEMENT_BYTES`` of text (at least one row): 50 stalled streams of 3 MB each
    bound in one statement cost 400 MB of peak RSS (issue 10, item 5).
    """
    if not rows:
        return
    width = len(rows[0])
    most = max(1, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    group = "(" + ", ".join("?" * width) + ")"
    part: list[Sequence[Any]] = []
    size = 0
    for row in rows:
        length = sum(len(v) for v in row if isinstance(v, str))
        if part and (len(part) >= most or size + length > STATEMENT_BYTES):
            _insert(db, sql, group, part)
            part, size = [], 0
        part.append(row)
        size += length
    _insert(db, sql, group, part)


def _insert(db: sqlite3.Connection, sql: str, group: str, rows: list[Sequence[Any]]) -> None:
    db.execute(sql.format(values=", ".join([group] * len(rows))),
               [value for row in rows for value in row])


def claim(db: sqlite3.Connection, claims: Mapping[str, str], now: float) -> dict[str, str]:
    """Create the conversations of ``claims`` (id -> tenant); return every owner."""
    insert_rows(db, NEW_CONVERSATIONS, [(cid, tenant, now, now)
                                        for cid, tenant in claims.items()])
    owners: dict[str, str] = {}
    ids = list(claims)
    per = max(1, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    for i in range(0, len(ids), per):
        part = ids[i:i + per]
        owners.update(db.execute(
            f"SELECT id, tenant FROM conversations WHERE id IN ({', '.join('?' * len(part))})",
            part).fetchall())
    return owners


def write(db: sqlite3.Connection, conversations: Iterable[Sequence[Any]],
          turns: Iterable[Mapping[str, Any]], deliveries: Sequence[Mapping[str, Any]],
          texts: Sequence[Sequence[Any]] = ()) -> None:
    """Upsert the conversations and turns of a batch; add its webhook deliveries.

    ``texts``: ``UPDATE_TEXT`` parameters of checkpoints whose rows exist.
    """
    insert_rows(db, UPSERT_CONVERSATIONS, list(conversations))
    insert_rows(db, UPSERT_TURNS, [tuple(t[c] for c in TURN_COLUMNS) for t in turns])
    if texts:
        db.executemany(UPDATE_TEXT, texts)
    if deliveries:
        disabled = {url for (url,) in db.execute(DISABLED)}
        rows = [d for d in deliveries if d["url"] not in disabled]
        if rows:
            columns = list(rows[0])
            db.executemany(
                f"INSERT INTO webhook_outbox ({', '.join(columns)}) VALUES "
                f"({', '.join(':' + c for c in columns)}) ON CONFLICT (id) DO NOTHING", rows)
