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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._cli import add_parser as add_db_parser
    from ._cli import preflight
    from ._cli import run as run_db
    from ._db import StoreConfigError, create_engine, database_url, is_sqlite, sqlite_path
    from ._migrate import current_revision, downgrade, ensure_current, head_revision, upgrade
    from ._persistence import Persistence, stored_outcome
    from ._store import IN_PROGRESS, Snapshot, Store
    from ._writer import TranscriptWriter

# Names load with their module on first use (PEP 562): ``streambridge serve`` checks
# its settings (``preflight``) and adds ``db`` to its parser before it execs gunicorn,
# and should not pay for SQLAlchemy and Alembic (~0.6 s of CPU) in that process.
_WHERE = {
    "add_db_parser": ("_cli", "add_parser"), "preflight": ("_cli", "preflight"),
    "run_db": ("_cli", "run"),
    "StoreConfigError": ("_db", None), "create_engine": ("_db", None),
    "database_url": ("_db", None), "is_sqlite": ("_db", None), "sqlite_path": ("_db", None),
    "current_revision": ("_migrate", None), "downgrade": ("_migrate", None),
    "ensure_current": ("_migrate", None), "head_revision": ("_migrate", None),
    "upgrade": ("_migrate", None),
    "Persistence": ("_persistence", None), "stored_outcome": ("_persistence", None),
    "IN_PROGRESS": ("_store", None), "Snapshot": ("_store", None), "Store": ("_store", None),
    "TranscriptWriter": ("_writer", None),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), attr or name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
