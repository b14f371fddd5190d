"""Schema migrations: Alembic, run through the store's own async engine.

``streambridge db upgrade`` applies them to any database; the embedded SQLite
default is also upgraded on start (under a file lock, since several gunicorn
workers start at once). A PostgreSQL server is never migrated implicitly: a
server finding it behind refuses to start and names the command to run.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ._db import StoreConfigError, sqlite_path

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# The newest revision under migrations/versions. Kept here so that a server starting on
# a database already at it never imports Alembic (~0.2 s of CPU a process);
# tests/store/test_store.py pins it to Alembic's own head.
HEAD = "0001"


def alembic_config() -> Config:
    """The Alembic configuration of the store (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    """The newest schema revision this code knows."""
    return HEAD


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    def read(conn: Connection) -> str | None:
        # What alembic.MigrationContext.get_current_revision reads: the one row of its
        # version table (this store has no branches, so at most one row).
        from sqlalchemy import inspect, text

        if not inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        if len(rows) > 1:
            raise StoreConfigError(f"the database has {len(rows)} schema revisions "
                                   f"({', '.join(rows)}); this store has no branches")
        return rows[0] if rows else None

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (idempotent; serialized for SQLite files)."""
    from alembic import command

    cfg = alembic_config()

    def run(conn: Connection) -> None:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    with _file_lock(sqlite_path(engine.url.render_as_string(hide_password=False))):
        async with engine.begin() as conn:
            await conn.run_sync(run)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Revert migrations down to ``revision`` (``base`` drops everything)."""
    from alembic import command

    cfg = alembic_config()

    def run(conn: Connection) -> None:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


async def ensure_current(engine: AsyncEngine, *, auto: bool) -> None:
    """Upgrade (``auto``) or check that the schema is at the head revision.

    Raises:
        StoreConfigError: the schema is behind and ``auto`` is False.
    """
    current, head = await current_revision(engine), head_revision()
    if auto:
        if current != head:  # behind (or ahead: Alembic names the unknown revision)
            await upgrade(engine)
        return
    if current != head:
        raise StoreConfigError(
            f"the database schema is at revision {current or 'none'}, this streambridge "
            f"needs {head}: run `streambridge db upgrade` first")


@contextlib.contextmanager
def _file_lock(db: Path | None) -> Iterator[None]:
    # Blocking flock, held only for the migration's few milliseconds at start-up,
    # before the server accepts requests: blocking the loop here stalls no stream.
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".migrate.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
