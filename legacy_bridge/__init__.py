"""streambridge's legacy path: Flask under gunicorn (gthread or gevent), streaming
through the engine in ``async_core`` over one janus seam (``_seam.py``).

The rule of this package: the sync world plus the one seam. It may import
``async_core``; its WSGI modules never import Starlette.

Exports are loaded lazily: ``gunicorn -c python:legacy_bridge.gunicorn_conf`` imports
this package in the master, and nothing here may import prometheus_client (or
asyncio machinery) before the config has set ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._bridge import Bridge, bridges
    from ._endpoints import ROUTE_HOOK, Endpoint
    from ._flask import StreamBridge, error_response
    from ._seam import JanusRunner
    from .app import create_app

__all__ = ["Bridge", "Endpoint", "JanusRunner", "ROUTE_HOOK", "StreamBridge", "bridges",
           "create_app", "error_response"]

_WHERE = {"StreamBridge": "_flask", "error_response": "_flask", "Bridge": "_bridge",
          "Endpoint": "_endpoints", "ROUTE_HOOK": "_endpoints",
          "JanusRunner": "_seam", "bridges": "_bridge", "create_app": "app"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'legacy_bridge' has no attribute {name!r}")
