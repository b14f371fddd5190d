"""streambridge's legacy path: Flask under gunicorn (gthread or gevent), streaming
through the engine in ``async_core`` over one janus seam (``_seam.py``, ``_frames.py``;
janus itself is used only in ``_janus_queue.py``).

The rule of this package: the sync world plus the one seam. It may import
``async_core``; its WSGI modules never import Starlette.

Exports are loaded lazily: ``gunicorn -c python:legacy_bridge.gunicorn_conf`` imports
this package in the master, and nothing here may import prometheus_client (or
asyncio machinery) before the config has set ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from async_core import Settings

    from ._bridge import LOOP_BRIDGE, Bridge, bridges
    from ._endpoints import ROUTE_HOOK, Endpoint
    from ._flask import StreamBridge, error_response
    from ._frames import FIRST_ON_LOOP, STREAM_ONLY_HEADERS, WSGIBody
    from ._glue import ThreadGlue
    from ._seam import JanusRunner
    from ._serve import serve
    from .app import create_app

__all__ = ["Bridge", "Endpoint", "FIRST_ON_LOOP", "JanusRunner", "LOOP_BRIDGE", "ROUTE_HOOK",
           "STREAM_ONLY_HEADERS", "StreamBridge", "ThreadGlue", "WSGIBody", "bridges",
           "create_app", "error_response", "janus_runner", "serve"]

_WHERE = {"StreamBridge": "_flask", "error_response": "_flask", "Bridge": "_bridge",
          "LOOP_BRIDGE": "_bridge", "Endpoint": "_endpoints", "ROUTE_HOOK": "_endpoints",
          "JanusRunner": "_seam", "WSGIBody": "_frames", "FIRST_ON_LOOP": "_frames",
          "STREAM_ONLY_HEADERS": "_frames",
          "ThreadGlue": "_glue",
          "bridges": "_bridge", "create_app": "app", "serve": "_serve"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'legacy_bridge' has no attribute {name!r}")


def janus_runner(settings: Settings | None = None, *, max_agents: int | None = None
                 ) -> JanusRunner:
    """A ``SyncRunner`` for an asyncio app: sync agents in native threads, behind janus.

    Hand it to ``async_core.StreamEngine(sync_runner=...)`` (or ``create_app``) to
    stream sync agents (``requests``-based generators) from a Starlette or FastAPI
    app under uvicorn. Call it in the process that serves (a factory, or at import
    of the app module): its queues bind to the loop that runs each stream.

    Args:
        settings: read for the default ``max_agents`` (default: from the environment).
        max_agents: sync agents running at once; default: one per stream slot and
            buffered slot (``max_streams`` + ``max_buffered``), so admission refuses first.
    """
    from async_core import Settings

    from ._glue import ThreadGlue
    from ._seam import JanusRunner

    if max_agents is None:
        settings = settings or Settings.from_env()
        max_agents = (settings.max_streams or 1024) + settings.max_buffered
    return JanusRunner(ThreadGlue(max_agents))
