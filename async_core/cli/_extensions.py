"""Optional extensions of the CLI and of the async app, found by module name.

``legacy_bridge`` and ``migration`` exist only while a migration runs; this
package never imports them. Instead the CLI looks for their ``commands`` modules
by name and skips an extension whose package is not installed, so deleting
``legacy_bridge/`` and ``migration/`` removes their commands and nothing else.
(A name list rather than entry points: entry points live in the installed
metadata, so a checkout whose editable install predates them would silently lose
``--path legacy``; a module name works as soon as the package is importable.)

An extension module has:

- ``register(cli: CommandLine) -> None``: adds its ``--path`` values, ``serve``
  options and subcommands;
- optionally ``sync_runner(settings) -> SyncRunner``: what runs sync agent forms on
  the async path (``legacy_bridge``'s janus runner).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .._settings import Settings
    from .._sources import SyncRunner

# Looked for in this order; ``migration`` builds on ``legacy_bridge``.
EXTENSIONS = ("legacy_bridge.commands", "migration.commands")


def load_extensions(names: tuple[str, ...] = EXTENSIONS) -> list[ModuleType]:
    """Import each extension module that is installed, in order.

    A module whose package is missing is skipped; any other import error (the
    package is there but broken, a dependency of it is missing) is raised.
    """
    found = []
    for name in names:
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as e:
            if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                raise
    return found


def sync_runner(settings: Settings) -> SyncRunner | None:
    """The first installed extension's sync runner, or None (async agent forms only)."""
    for extension in load_extensions():
        make = getattr(extension, "sync_runner", None)
        if make is not None:
            return cast("SyncRunner", make(settings))
    return None


def create_async_app(settings: Settings | None = None) -> Starlette:
    """Factory for uvicorn behind ``streambridge serve --path async``, from ``STREAMBRIDGE_*``.

    ``async_core.create_app`` alone runs async agent forms only. This factory also
    hands it an extension's sync runner when one is installed, so an agent's sync
    form can run on the async path too (``STREAMBRIDGE_AGENT_FORM=sync``, or an agent
    that has only a sync form). The engine starts each sync agent from the stream's
    own coroutine on uvicorn's loop, so the runner's queues bind to the loop that
    reads them.

    Args:
        settings: configuration (default: ``Settings.from_env()``).
    """
    from .._app import create_app
    from .._settings import Settings

    settings = settings or Settings.from_env()
    return create_app(settings, sync_runner=sync_runner(settings))
