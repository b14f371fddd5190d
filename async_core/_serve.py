"""Run the native server under uvicorn with timeouts that nest correctly."""

from __future__ import annotations

import uvicorn

from ._settings import Settings

# uvicorn's own graceful timeout only has to cover writing the terminal events:
# streams are drained (drain_grace + 1 s) before uvicorn is told to stop.
SERVER_GRACE_MARGIN = 5.0


def serve(*, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          app: str = "async_core:create_app_from_env", log_level: str = "info",
          settings: Settings | None = None) -> None:
    """Serve the native app with uvicorn until SIGTERM, then drain and exit.

    Args:
        host: interface to bind (loopback by default).
        port: TCP port; 0 picks a free one (uvicorn logs which).
        workers: worker processes.
        app: import string of an app factory taking no arguments.
        log_level: uvicorn's log level.
        settings: read for the drain grace (default: from the environment).
    """
    settings = settings or Settings.from_env()
    uvicorn.run(app, factory=True, host=host, port=port, workers=workers,
                log_level=log_level, lifespan="on", timeout_keep_alive=5,
                timeout_graceful_shutdown=int(SERVER_GRACE_MARGIN + 0.999))
