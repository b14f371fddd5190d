"""The async path's app with a bridge for sync agents: ``streambridge serve --path async``.

``async_core.create_app`` alone runs async agents only (async_core never imports
janus). This factory hands it ``legacy_bridge``'s janus runner, so an agent's sync
form (``requests``-based, say) can run on the async path too: set
``STREAMBRIDGE_AGENT_FORM=sync`` (or an agent that has only a sync form).

Which loop the janus queues bind to: the engine calls ``runner.start()`` from the
stream's own coroutine, on uvicorn's running loop, and each ``JanusSource`` creates
its queue there, so every queue belongs to the loop that reads it. The agent
itself runs in a native worker thread and only touches the queue's sync side.
"""

from __future__ import annotations

from starlette.applications import Starlette

from async_core import Settings, create_app
from legacy_bridge import janus_runner


def create_async_app(settings: Settings | None = None) -> Starlette:
    """Factory for uvicorn: the native app, configured from ``STREAMBRIDGE_*``.

    Args:
        settings: configuration (default: ``Settings.from_env()``).
    """
    settings = settings or Settings.from_env()
    return create_app(settings, sync_runner=janus_runner(settings))
