"""Which database, and how to connect: the SQLAlchemy async engine.

The embedded default is one SQLite file in WAL mode (readers never block the one
writer; several gunicorn workers may share it on one host). ``synchronous=NORMAL``
keeps every committed transaction across an application crash (SIGKILL, OOM);
only a power loss may roll back the last commits (sqlite.org/wal.html). Every
connection waits up to ``BUSY_TIMEOUT_MS`` for the write lock instead of failing
with ``SQLITE_BUSY``. PostgreSQL is reached through asyncpg.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._settings import Settings
from ..exceptions import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

# SQLAlchemy is imported where an engine or a URL is built, not here: ``serve``'s
# preflight and ``streambridge --help`` only need the default SQLite file's path, and
# importing SQLAlchemy costs about 0.3 s of CPU in every process that starts.
_SQLITE = "sqlite+aiosqlite:///"

BUSY_TIMEOUT_MS = 10_000


class StoreConfigError(ConfigError):
    """The database settings cannot work; raised at start-up with the reason."""


def database_url(settings: Settings) -> str | None:
    """Return the SQLAlchemy URL the settings name, or None when persistence is off.

    Raises:
        StoreConfigError: the URL names a driver we do not support.
    """
    raw = settings.database_url.strip()
    if raw.lower() == "none":
        return None
    if not raw:
        path = Path(settings.database_path).expanduser()
        return f"{_SQLITE}{path.resolve()}"
    from sqlalchemy.engine import make_url

    url = make_url(raw)
    # Plain postgres:// and postgresql:// URLs (as hosting providers print them) get asyncpg.
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+asyncpg")
    elif url.drivername == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    if url.drivername not in ("postgresql+asyncpg", "sqlite+aiosqlite"):
        raise StoreConfigError(
            f"STREAMBRIDGE_DATABASE_URL uses driver {url.drivername!r}; use "
            "postgresql+asyncpg://... or sqlite+aiosqlite:///path")
    return url.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    """Whether ``url`` names a SQLite database."""
    return url.split(":", 1)[0].split("+", 1)[0] == "sqlite"  # dialect[+driver]://


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite ``url`` (None for other databases or in-memory ones)."""
    if url.startswith(_SQLITE) and not any(c in url for c in "?%#"):  # as database_url builds
        return Path(url[len(_SQLITE):]) if url != _SQLITE else None
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def create_engine(url: str) -> AsyncEngine:
    """Create the async engine for ``url`` (SQLite: WAL, busy timeout, foreign keys).

    Must be called on the event loop that will use the engine: asyncpg and
    aiosqlite connections belong to one loop.
    """
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import create_async_engine

    kwargs: dict[str, Any] = {}
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_MS / 1000}
    else:
        kwargs.update(pool_size=5, max_overflow=5, pool_pre_ping=True)
    engine = create_async_engine(url, **kwargs)
    if is_sqlite(url):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def process_token() -> str:
    """Who writes a checkpoint: ``host:pid``, so a restart can tell dead writers."""
    return f"{os.uname().nodename}:{os.getpid()}"
