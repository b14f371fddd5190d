"""Run the reference Flask app under gunicorn with the legacy path's configuration."""

from __future__ import annotations

import os
import sys
from typing import Literal

WorkerClass = Literal["gthread", "gevent"]
WORKER_CLASSES: tuple[WorkerClass, ...] = ("gthread", "gevent")
# What gunicorn runs for each: its own workers, subclassed to bound the time a client
# takes to send a request (STREAMBRIDGE_REQUEST_READ_TIMEOUT; see _workers.py).
WORKER_CLASS_PATHS: dict[str, str] = {
    "gthread": "legacy_bridge._workers.ReadTimeoutThreadWorker",
    "gevent": "legacy_bridge._gevent_worker.ReadTimeoutGeventWorker",
}


def gunicorn_argv(*, host: str, port: int, workers: int, worker_class: WorkerClass,
                  threads: int | None = None, log_level: str = "info") -> list[str]:
    """The gunicorn command line that ``serve`` runs (also shown in the runbooks)."""
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:legacy_bridge.gunicorn_conf",
            "--bind", f"{host}:{port}", "--workers", str(workers),
            "--worker-class", WORKER_CLASS_PATHS[worker_class], "--log-level", log_level]
    if threads is not None:
        argv += ["--threads", str(threads)]
    return [*argv, "legacy_bridge.app:create_app()"]


def serve(*, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          worker_class: WorkerClass = "gthread", threads: int | None = None,
          log_level: str = "info") -> None:
    """Replace this process with gunicorn serving the legacy path (same PID for signals)."""
    argv = gunicorn_argv(host=host, port=port, workers=workers, worker_class=worker_class,
                         threads=threads, log_level=log_level)
    os.execv(argv[0], argv)
