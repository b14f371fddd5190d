"""The dependency arrows of DESIGN.md, and the public API, are kept honest by tests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import async_core
import async_core.wire
import legacy_bridge
from tests.servers import REPO

FORBIDDEN = {
    # async_core: the async world only; sync agents arrive through a SyncRunner.
    "async_core": {"flask", "werkzeug", "janus", "gunicorn", "gevent", "legacy_bridge",
                   "migration"},
    "async_core.wire": {"flask", "werkzeug", "janus", "gunicorn", "gevent", "starlette",
                        "httpx", "anyio", "legacy_bridge", "migration"},
    # The engine alone (what the WSGI side uses) loads no ASGI server or framework.
    "async_core.engine": {"starlette", "sse_starlette", "uvicorn", "flask", "janus", "gevent"},
    # The WSGI side never imports Starlette (nor the hybrid front's a2wsgi).
    "legacy_bridge": {"starlette", "sse_starlette", "uvicorn", "a2wsgi", "migration"},
    "legacy_bridge.app": {"starlette", "sse_starlette", "uvicorn", "a2wsgi", "migration"},
}
IMPORTS = {
    "async_core": "import async_core; async_core.create_app; async_core.serve",
    "async_core.wire": "import async_core.wire",
    "async_core.engine": "import async_core; async_core.StreamService",
    "legacy_bridge": "import legacy_bridge; legacy_bridge.StreamBridge",
    "legacy_bridge.app": "import legacy_bridge.app; legacy_bridge.app.create_app()",
}


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_package_imports_nothing_it_must_not(package: str) -> None:
    """Importing the package (in a fresh interpreter) loads none of its forbidden modules."""
    code = (f"import sys, json; {IMPORTS[package]}; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=60)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & FORBIDDEN[package], f"{package} loaded {loaded & FORBIDDEN[package]}"


@pytest.mark.parametrize("module", [async_core, async_core.wire, legacy_bridge])
def test_public_api_is_explicit(module: object) -> None:
    """Every name in __all__ exists, and __all__ is sorted and has no duplicates."""
    names = module.__all__  # type: ignore[attr-defined]
    assert names == sorted(names) or module is async_core.wire
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(module, name) is not None


def test_async_core_public_api_is_pinned() -> None:
    """Changing the public API of async_core is a deliberate act: update this list."""
    assert async_core.__all__ == [
        "Agent", "AgentEnd", "AgentFailure", "AgentRegistry", "AgentRequest", "AgentSource",
        "AsyncSource", "ChatCall", "Finish", "Lifecycle", "LifecycleState", "Outcome",
        "Settings", "StateUpdate", "StreamEngine", "StreamInfo", "StreamPolicy", "StreamRecord",
        "StreamService", "StreamSession", "SyncRunner", "Usage", "bound_send_buffer",
        "cancel_and_wait", "create_app",
        "create_app_from_env", "default_registry", "parse_chat", "serve",
    ]
