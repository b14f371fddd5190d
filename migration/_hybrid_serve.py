"""Run the hybrid front under gunicorn with uvicorn workers, over the user's Flask app."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from async_core import load_settings

if TYPE_CHECKING:
    from flask import Flask

# The user's Flask app behind the front (``module:attribute``): --app sets it for the
# workers, and a plain gunicorn command sets it in the environment.
APP_ENV = "STREAMBRIDGE_APP"
THREADS_ENV = "STREAMBRIDGE_HYBRID_THREADS"


@dataclass(frozen=True, kw_only=True, slots=True)
class FrontSettings:
    """The hybrid front's own settings, read once by ``async_core.load_settings``.

    Attributes:
        app: the user's Flask app behind the front, ``module:attribute`` or
            ``module:factory()`` (``STREAMBRIDGE_APP``); empty: the reference app.
        hybrid_threads: WSGI threads of the Flask branch (``STREAMBRIDGE_HYBRID_THREADS``);
            0: one per stream slot and buffered slot, plus 16.
    """

    app: str = ""
    hybrid_threads: int = 0

    def __post_init__(self) -> None:
        if self.hybrid_threads < 0:
            raise ValueError(f"{THREADS_ENV} must be >= 0, got {self.hybrid_threads}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FrontSettings:
        """Read ``STREAMBRIDGE_APP`` and ``STREAMBRIDGE_HYBRID_THREADS`` (default: ``os.environ``).

        Raises:
            ValueError: a value does not parse, naming the variable.
        """
        return load_settings(cls, environ)


def load_app(spec: str) -> Flask:
    """Import the Flask app ``spec`` names: ``module:attribute`` or ``module:factory()``.

    Raises:
        ValueError: a one-line reason (bad spelling, import error, not a Flask app).
    """
    from flask import Flask

    module_name, _, attribute = spec.strip().partition(":")
    attribute = attribute or "app"
    call = attribute.endswith("()")
    attribute = attribute.removesuffix("()")
    if not module_name or not attribute.isidentifier():
        raise ValueError(f"app {spec!r} must be module:attribute (e.g. yourpackage.wsgi:app)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"app {spec!r}: cannot import {module_name}: {e} "
                         "(is its directory on PYTHONPATH?)") from None
    found = getattr(module, attribute, None)
    if found is None:
        raise ValueError(f"app {spec!r}: module {module_name} has no {attribute!r}")
    app = found() if call else found
    if not isinstance(app, Flask):
        raise ValueError(f"app {spec!r} is a {type(app).__name__}, not a Flask app")
    if "streambridge" not in app.extensions:
        raise ValueError(f"app {spec!r} has no StreamBridge: add legacy_bridge.StreamBridge(app)")
    return app


def app_problem(spec: str) -> str | None:
    """Why ``spec`` cannot name an app, without importing it (None: it may).

    Checks the spelling and that its top-level package is on ``sys.path``: what the
    gunicorn master can check before forking, without importing the user's code there.
    """
    module_name, _, attribute = spec.strip().partition(":")
    if not module_name or not (attribute or "app").removesuffix("()").isidentifier():
        return f"app {spec!r} must be module:attribute (e.g. yourpackage.wsgi:app)"
    top = module_name.split(".")[0]
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        found = None
    if found is None:
        return (f"app {spec!r}: no module named {top!r} "
                "(run from your project's directory or set PYTHONPATH)")
    return None


def gunicorn_argv(*, host: str, port: int, workers: int, log_level: str = "info") -> list[str]:
    """The gunicorn command line that ``serve`` runs (also shown in the runbooks)."""
    return [sys.executable, "-m", "gunicorn", "-c", "python:migration.hybrid_gunicorn_conf",
            "--bind", f"{host}:{port}", "--workers", str(workers), "--log-level", log_level,
            "migration.hybrid:create_app()"]


def serve(*, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          threads: int | None = None, flags_file: str | None = None,
          app: str | None = None, log_level: str = "info") -> None:
    """Replace this process with gunicorn serving the hybrid front (same PID for signals).

    Args:
        threads: WSGI threads of the Flask branch (``STREAMBRIDGE_HYBRID_THREADS``).
        flags_file: the migration flag file (``STREAMBRIDGE_FLAGS_FILE``).
        app: the user's Flask app, ``module:attribute`` (``STREAMBRIDGE_APP``).
    """
    if threads is not None:
        os.environ[THREADS_ENV] = str(threads)
    if flags_file is not None:
        os.environ["STREAMBRIDGE_FLAGS_FILE"] = os.path.abspath(flags_file)
    if app is not None:
        os.environ[APP_ENV] = app
    argv = gunicorn_argv(host=host, port=port, workers=workers, log_level=log_level)
    os.execv(argv[0], argv)
