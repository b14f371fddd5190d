"""The async path's app factory, kept under its old name: ``async_core.cli.create_async_app``.

``streambridge serve --path async`` runs the permanent one; this alias goes with
``migration/``.
"""

from __future__ import annotations

from async_core.cli import create_async_app

__all__ = ["create_async_app"]
