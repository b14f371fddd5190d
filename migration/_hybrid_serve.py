"""Run the hybrid front under gunicorn with uvicorn workers."""

from __future__ import annotations

import os
import sys


def gunicorn_argv(*, host: str, port: int, workers: int, log_level: str = "info") -> list[str]:
    """The gunicorn command line that ``serve`` runs (also shown in the runbooks)."""
    return [sys.executable, "-m", "gunicorn", "-c", "python:migration.hybrid_gunicorn_conf",
            "--bind", f"{host}:{port}", "--workers", str(workers), "--log-level", log_level,
            "migration.hybrid:create_app()"]


def serve(*, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          threads: int | None = None, flags_file: str | None = None,
          log_level: str = "info") -> None:
    """Replace this process with gunicorn serving the hybrid front (same PID for signals).

    Args:
        threads: WSGI threads of the Flask branch (``STREAMBRIDGE_HYBRID_THREADS``).
        flags_file: the migration flag file (``STREAMBRIDGE_FLAGS_FILE``).
    """
    if threads is not None:
        os.environ["STREAMBRIDGE_HYBRID_THREADS"] = str(threads)
    if flags_file is not None:
        os.environ["STREAMBRIDGE_FLAGS_FILE"] = os.path.abspath(flags_file)
    argv = gunicorn_argv(host=host, port=port, workers=workers, log_level=log_level)
    os.execv(argv[0], argv)
