"""streambridge's streaming engine and native async server.

The rule of this package: the async world only. It never imports flask,
werkzeug, janus, gunicorn or gevent; sync agents reach it through a
``SyncRunner`` handed in from outside (``legacy_bridge`` provides the janus one).
The Starlette app is imported lazily so that the WSGI side can use the engine
without importing Starlette.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._engine import SessionSettings, StreamSession
from ._lifecycle import Lifecycle, LifecycleState, install_sigterm_drain
from ._metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ._metrics import render as render_metrics
from ._page import PAGE_CONTENT_TYPE, cors_headers, render_page
from ._records import FinishHook, Outcome, Streamable, StreamInfo, StreamRecord
from ._registry import default_registry
from ._settings import Settings, StreamPolicy, load_settings
from ._sockets import bound_send_buffer, gunicorn_worker_started
from ._sources import AgentEnd, AgentSource, AsyncSource, Batch, SyncRunner
from ._tasks import cancel_and_wait
from ._ws import WebSocketSession
from .agents import (
    Agent,
    AgentFailure,
    AgentRegistry,
    AgentRequest,
    Finish,
    StateUpdate,
    Usage,
)
from .exceptions import ConfigError, StreamBridgeError
from .policy import PolicyMachine, PolicyState
from .protocol import ChatCall, parse_chat
from .service import StreamService

if TYPE_CHECKING:
    from ._app import create_app, create_app_from_env
    from ._embed import StreamEngine
    from ._serve import serve

__all__ = [
    "Agent",
    "AgentEnd",
    "AgentFailure",
    "AgentRegistry",
    "AgentRequest",
    "AgentSource",
    "AsyncSource",
    "Batch",
    "ChatCall",
    "ConfigError",
    "Finish",
    "FinishHook",
    "Lifecycle",
    "LifecycleState",
    "METRICS_CONTENT_TYPE",
    "Outcome",
    "PAGE_CONTENT_TYPE",
    "PolicyMachine",
    "PolicyState",
    "SessionSettings",
    "Settings",
    "StateUpdate",
    "StreamBridgeError",
    "StreamEngine",
    "StreamInfo",
    "StreamPolicy",
    "StreamRecord",
    "StreamService",
    "StreamSession",
    "Streamable",
    "SyncRunner",
    "Usage",
    "WebSocketSession",
    "bound_send_buffer",
    "cancel_and_wait",
    "cors_headers",
    "create_app",
    "create_app_from_env",
    "default_registry",
    "gunicorn_worker_started",
    "install_sigterm_drain",
    "load_settings",
    "parse_chat",
    "render_metrics",
    "render_page",
    "serve",
]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "create_app_from_env"):
        from . import _app

        return getattr(_app, name)
    if name == "StreamEngine":
        from ._embed import StreamEngine

        return StreamEngine
    if name == "serve":
        from ._serve import serve

        return serve
    raise AttributeError(f"module 'async_core' has no attribute {name!r}")
