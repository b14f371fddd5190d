"""Run the native server under uvicorn with timeouts that nest correctly."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shutil
import socket
import sys
import tempfile
from typing import Literal

import uvicorn

from ._settings import Settings
from ._sockets import bound_send_buffer
from .read_timeout import read_timeout_protocol

Loop = Literal["auto", "asyncio", "uvloop"]

# uvicorn's own graceful timeout only has to cover writing the terminal events:
# streams are drained (drain_grace + 1 s) before uvicorn is told to stop.
SERVER_GRACE_MARGIN = 5.0


def serve(*, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          app: str = "async_core:create_app_from_env", log_level: str = "info",
          settings: Settings | None = None, loop: Loop = "auto") -> None:
    """Serve the native app with uvicorn until SIGTERM, then drain and exit.

    Args:
        host: interface to bind (loopback by default).
        port: TCP port; 0 picks a free one (uvicorn logs which).
        workers: worker processes.
        app: import string of an app factory taking no arguments.
        log_level: uvicorn's log level.
        settings: read for the drain grace and the request read timeout (default: from
            the environment).
        loop: uvicorn's event loop; ``auto`` is uvloop when it is importable.

    Raises:
        SystemExit: ``loop="uvloop"`` without uvloop installed (a one-line message).
    """
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise SystemExit("streambridge: --loop uvloop needs uvloop (pip install uvloop)")
    settings = settings or Settings.from_env()
    # Several workers: each writes its metrics to files in one directory and /metrics
    # sums them (prometheus_client multiprocess mode, as gunicorn_conf does). uvicorn
    # spawns fresh interpreters, which read the variable when they import the client.
    own_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
            prefix="streambridge-prom-")
    try:
        _run(app, host=host, port=port, workers=workers, log_level=log_level,
             settings=settings, loop=loop)
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


def _run(app: str, *, host: str, port: int, workers: int, log_level: str,
         settings: Settings, loop: Loop) -> None:
    config = uvicorn.Config(app, factory=True, host=host, port=port, workers=workers,
                            log_level=log_level, lifespan="on", loop=loop, timeout_keep_alive=5,
                            http=read_timeout_protocol(settings.request_read_timeout),
                            timeout_graceful_shutdown=int(SERVER_GRACE_MARGIN + 0.999),
                            ws_ping_interval=_finite(settings.policy.heartbeat),
                            # /v1/ws: token messages are small and SSE is not compressed
                            # either; per-message deflate cost ~40% more CPU per token
                            # and ~50 KiB a socket (scripts/bench_ws.py)
                            ws_per_message_deflate=False)
    # What uvicorn.run does, with the listening socket's send buffer bounded first
    # (connections inherit it: a stalled client is caught by the send timeout soon).
    sock = config.bind_socket()
    bound_send_buffer(sock, settings.socket_send_buffer)
    # asyncio sets TCP_NODELAY only on sockets made with proto IPPROTO_TCP, and uvicorn
    # binds with proto 0: its connections kept Nagle, so a small write right after
    # another waited for the client's delayed ACK (~40 ms: a WebSocket's "started"
    # then its first deltas, scripts/bench_ws.py). gunicorn sets it on its listeners;
    # connections accepted here inherit it.
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if config.workers > 1:
        from uvicorn.supervisors import Multiprocess

        Multiprocess(config, sockets=[sock]).run()
        return
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE, as uvicorn.run exits


def _finite(seconds: float) -> float | None:
    """``seconds``, or None (off) for infinity: uvicorn's ``ws_ping_interval``."""
    return seconds if math.isfinite(seconds) else None
