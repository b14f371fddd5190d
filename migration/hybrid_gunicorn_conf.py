"""gunicorn configuration for the hybrid front (``streambridge serve --path hybrid``).

Use: ``gunicorn -c python:migration.hybrid_gunicorn_conf 'migration.hybrid:create_app()'``
(the application argument may be left out: ``wsgi_app`` below names it). Your own
Flask app goes behind the front with ``STREAMBRIDGE_APP=yourpackage.wsgi:app`` in the
environment (what ``streambridge serve --path hybrid --app ...`` sets); the front
imports it in each worker, after fork. Without it the front serves the reference app.
The worker class is ``migration.hybrid.HybridWorker`` (uvicorn-worker's, with uvicorn's
graceful timeout set: uvicorn#2094). Timeouts, outermost first (each longer than the
one below it):

    orchestrator grace (e.g. Kubernetes terminationGracePeriodSeconds)
      > graceful_timeout = drain_grace + 6 s (whole seconds)
        > drain_grace + 1 s (streams end in-band) + uvicorn's timeout_graceful_shutdown
          (graceful_timeout - drain_grace - 3 s) + the lifespan shutdown
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

# Metrics from every worker: prometheus_client reads this before it is imported, and
# async_core (imported next) imports it.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="streambridge-prom-")

from async_core import Settings, load_settings  # noqa: E402  (after the metrics directory)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Launch:
    """gunicorn's own settings for the front (``streambridge serve`` passes flags instead)."""

    bind: str = "127.0.0.1:8000"  # STREAMBRIDGE_BIND
    workers: int = 1  # STREAMBRIDGE_WORKERS

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"STREAMBRIDGE_WORKERS must be >= 1, got {self.workers}")


try:  # a bad value is one line and exit status 2, before gunicorn starts
    _launch, _grace = load_settings(_Launch), Settings.from_env().drain_grace
except ValueError as error:
    print(f"streambridge: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None

bind = _launch.bind
workers = _launch.workers
worker_class = "migration.hybrid.HybridWorker"
wsgi_app = "migration.hybrid:create_app()"  # reads STREAMBRIDGE_APP (the user's Flask app)
graceful_timeout = int(_grace + 6.999)
timeout = 30
keepalive = 5
preload_app = False  # each worker builds its app (and its loop's seam) after fork
control_socket_disable = True  # gunicorn 27: no control socket under ~/.gunicorn


def on_starting(server: Any) -> None:
    """In the master, before it binds: refuse a bad configuration with one line, exit 2.

    A ``STREAMBRIDGE_APP`` that cannot import (checked without importing it into the
    master), then what ``serve`` refuses: bad settings, API keys, binding beyond
    loopback without keys, the database, the agents (``async_core.store.preflight``).
    """
    from async_core.store import preflight
    from migration._flagfile import base_config
    from migration._hybrid_serve import APP_ENV, FrontSettings, app_problem

    try:
        spec = FrontSettings.from_env().app
        base_config()  # STREAMBRIDGE_FLAGS_MODE
    except ValueError as error:
        print(f"streambridge: {error}", file=sys.stderr)
        sys.exit(2)
    problem = app_problem(spec) if spec else None
    if problem is not None:
        print(f"streambridge: {APP_ENV}: {problem}", file=sys.stderr)
        sys.exit(2)
    hosts = [a[0] for a in server.cfg.address if isinstance(a, tuple)] or ["127.0.0.1"]
    for host in hosts:
        problem = preflight(host or "0.0.0.0")
        if problem is not None:
            print(f"streambridge: {problem}", file=sys.stderr)
            sys.exit(2)


def child_exit(server: Any, worker: Any) -> None:
    """Forget a dead worker's live gauges (Prometheus multiprocess mode)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def post_worker_init(worker: Any) -> None:
    """Show streambridge's log lines (the flag's decisions among them) in gunicorn's log."""
    from async_core import Settings, gunicorn_worker_started

    # Log lines shown; connections inherit the listener's send buffer (a client that
    # stops reading is caught by the send timeout soon).
    gunicorn_worker_started(worker.sockets, Settings.from_env().socket_send_buffer)
