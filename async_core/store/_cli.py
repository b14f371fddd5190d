"""``streambridge db ...`` and the start-up checks of ``streambridge serve``.

Argparse and asyncio only; ``migration/cli.py`` wires these into the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from .._settings import Settings
from ..exceptions import StreamBridgeError


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
    """Run a ``db`` subcommand; returns the exit status."""
    settings = settings or Settings.from_env()
    try:
        return asyncio.run(_run(args, settings))
    except StreamBridgeError as e:
        print(f"streambridge db: {e.message}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from . import create_engine, current_revision, database_url, downgrade, head_revision, upgrade

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
    database URL and the webhook settings, so a bad configuration stops the
    command with one clear sentence instead of a worker traceback.
    """
    from ..auth import ApiKeys, check_bind
    from ..webhooks import WebhookConfig
    from ._db import database_url

    try:
        settings = settings or Settings.from_env()
        ApiKeys.from_settings(settings)
        check_bind(host, settings)
        database_url(settings)
        WebhookConfig.from_settings(settings)
    except (StreamBridgeError, ValueError) as e:
        return getattr(e, "message", str(e))
    return None
