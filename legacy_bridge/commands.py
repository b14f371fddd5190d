"""What this package adds to the ``streambridge`` command line and to the async app.

Found by name by ``async_core.cli`` (which never imports this package): ``serve
--path legacy`` with its ``--worker-class`` and ``--threads``, and the janus runner
that lets ``serve --path async`` run sync agent forms. Delete the package and
they are gone; nothing else changes.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._serve import WORKER_CLASSES

if TYPE_CHECKING:
    from async_core import Settings
    from async_core.cli import CommandLine

    from ._seam import JanusRunner


def register(cli: CommandLine) -> None:
    """Add ``serve --path legacy`` (gunicorn, gthread or gevent) to ``cli``."""
    cli.serve_argument("--worker-class", choices=WORKER_CLASSES, default="gthread",
                       help="gunicorn worker class for --path legacy (default: gthread)")
    cli.serve_argument("--threads", type=int, default=None,
                       help="gthread threads per worker, one per open stream (default: 64)")
    cli.add_path("legacy", _serve_legacy)


def sync_runner(settings: Settings) -> JanusRunner:
    """The runner for sync agent forms on the async path: ``janus_runner(settings)``."""
    from . import janus_runner

    return janus_runner(settings)


def _serve_legacy(args: argparse.Namespace) -> int:
    from ._serve import serve

    serve(host=args.host, port=args.port, workers=args.workers,
          worker_class=args.worker_class, threads=args.threads, log_level=args.log_level)
    return 0
