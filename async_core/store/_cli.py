"""``streambridge db ...`` and the start-up checks of ``streambridge serve``.

Argparse and asyncio only; ``async_core/cli`` wires these into the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from .._settings import Settings
from ..exceptions import ConfigError, StreamBridgeError
from ._db import StoreConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``db upgrade|current|downgrade`` to the ``streambridge`` parser."""
    db = sub.add_parser("db", help="manage the database schema (Alembic migrations)")
    actions = db.add_subparsers(dest="db_command", required=True)
    up = actions.add_parser("upgrade", help="apply migrations (STREAMBRIDGE_DATABASE_URL, "
                                            "or the embedded SQLite file)")
    up.add_argument("revision", nargs="?", default="head")
    actions.add_parser("current", help="print the schema revision and the newest known")
    down = actions.add_parser("downgrade", help="revert migrations down to REVISION")
    down.add_argument("revision", help="a revision id, or 'base' to drop everything")


def run(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """Run a ``db`` subcommand; returns the exit status (one line on stderr on failure)."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        settings = settings or Settings.from_env()
        return asyncio.run(_run(args, settings))
    except (ConfigError, StreamBridgeError) as e:
        print(f"streambridge db: {e.message}", file=sys.stderr)
    except CommandError as e:  # an unknown revision, say
        print(f"streambridge db: {_one_line(e)} (known: base, "
              f"{_known_revisions()})", file=sys.stderr)
    except (ValueError, OSError, SQLAlchemyError, TimeoutError) as e:
        print(f"streambridge db: {_one_line(e)}", file=sys.stderr)
    return 2


def _known_revisions() -> str:
    from alembic.script import ScriptDirectory

    from ._migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    return ", ".join(r.revision for r in reversed(list(script.walk_revisions()))) + ", head"


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from ._db import create_engine, database_url
    from ._migrate import current_revision, downgrade, head_revision, upgrade

    url = database_url(settings)
    if url is None:
        print("streambridge db: persistence is off (STREAMBRIDGE_DATABASE_URL=none)",
              file=sys.stderr)
        return 2
    engine = create_engine(url)
    try:
        if args.db_command == "upgrade":
            await upgrade(engine, args.revision)
        elif args.db_command == "downgrade":
            await downgrade(engine, args.revision)
        current = await current_revision(engine)
        print(f"database: {engine.url.render_as_string(hide_password=True)}")
        print(f"revision: {current or 'none'} (newest known: {head_revision()})")
    finally:
        await engine.dispose()
    return 0


def preflight(host: str, settings: Settings | None = None) -> str | None:
    """Check what ``serve`` would refuse at start-up; return the reason, or None.

    Covers the API keys, binding a non-loopback address without keys, the
    database URL, the webhook settings and the stream log's Redis, so a bad
    configuration stops the command with one clear sentence instead of a worker
    traceback.
    """
    from .._registry import default_registry
    from ..auth import ApiKeys, check_bind
    from ..webhooks import WebhookConfig
    from ._db import database_url

    try:
        settings = settings or Settings.from_env()
        ApiKeys.from_settings(settings)
        check_bind(host, settings)
        url = database_url(settings)
        WebhookConfig.from_settings(settings)
        default_registry(settings)  # STREAMBRIDGE_AGENTS imports, here and now
        if url is not None:
            asyncio.run(_check_database(url))
        if settings.log.redis_url:
            asyncio.run(_check_log(settings))
    except (StreamBridgeError, ValueError, OSError, TimeoutError) as e:
        return getattr(e, "message", None) or _one_line(e)
    except Exception as e:
        # SQLAlchemy is imported only by a URL that needs it (not the default SQLite
        # file): an error of its own means it is loaded, so this import is free.
        from sqlalchemy.exc import SQLAlchemyError

        if not isinstance(e, SQLAlchemyError):
            raise
        return _one_line(e)
    return None


CONNECT_CHECK_SECONDS = 10.0


async def _check_log(settings: Settings) -> None:
    """Open and close the Redis stream log once (``LogUnavailable`` names the URL)."""
    from ..streamlog import open_log

    stream_log = await open_log(settings.log, sweeper=False, heartbeat=False)
    await stream_log.aclose()


async def _check_database(url: str) -> None:
    """Connect once (a server database) or check the file can be created (SQLite)."""
    from ._db import create_engine, sqlite_path

    path = sqlite_path(url)
    if path is not None:
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise StoreConfigError(f"the SQLite database {path} cannot be written "
                                   "(STREAMBRIDGE_DATABASE_PATH / STREAMBRIDGE_DATABASE_URL)")
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    shown = make_url(url).render_as_string(hide_password=True)
    engine = create_engine(url)
    try:
        async with asyncio.timeout(CONNECT_CHECK_SECONDS), engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
    except (OSError, SQLAlchemyError, TimeoutError) as e:
        raise StoreConfigError(f"cannot connect to the database {shown}: "
                               f"{_one_line(e)}") from None
    finally:
        await engine.dispose()
