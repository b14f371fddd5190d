"""Storage: conversations, checkpointed transcripts and the webhook outbox.

SQLAlchemy 2 async engine over a SQLite file in WAL mode (the embedded default,
migrated on first start) or PostgreSQL via asyncpg (``STREAMBRIDGE_DATABASE_URL``,
migrated by ``streambridge db upgrade``). Streams never wait on it per chunk:
checkpoints, final transcripts and conversation claims go through one background
writer per process (``_writer``), flushed on graceful shutdown.

- A conversation is claimed for its tenant at admission, before the first byte,
  new ones included: another tenant gets 404 from then on, in every process.
- A row the database refuses never blocks the others: the batch is bisected, the
  refused snapshot retried three times, then dead-lettered (one ERROR log line with
  its ids, ``streambridge_transcripts_dead_lettered_total``).
- Text with lone surrogates (valid JSON, not encodable as UTF-8) is stored with
  U+FFFD in their place.
"""

from __future__ import annotations

from ._cli import add_parser as add_db_parser
from ._cli import preflight
from ._cli import run as run_db
from ._db import StoreConfigError, create_engine, database_url, is_sqlite, sqlite_path
from ._migrate import current_revision, downgrade, ensure_current, head_revision, upgrade
from ._persistence import Persistence, stored_outcome
from ._store import IN_PROGRESS, Snapshot, Store
from ._writer import TranscriptWriter

__all__ = [
    "IN_PROGRESS",
    "Persistence",
    "Snapshot",
    "Store",
    "StoreConfigError",
    "TranscriptWriter",
    "add_db_parser",
    "create_engine",
    "current_revision",
    "database_url",
    "downgrade",
    "ensure_current",
    "head_revision",
    "is_sqlite",
    "preflight",
    "run_db",
    "sqlite_path",
    "stored_outcome",
    "upgrade",
]
