"""What this package adds to the ``streambridge`` command line.

Found by name by ``async_core.cli`` (which never imports this package): ``serve
--path hybrid`` with its ``--flags-file``, ``--app`` and ``--threads``, and ``flags
show|set``. Delete the package and they are gone; nothing else changes.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from async_core.cli import CommandLine


def register(cli: CommandLine) -> None:
    """Add ``serve --path hybrid`` and the ``flags`` command to ``cli``."""
    from ._flagfile import add_parser, run

    cli.serve_argument("--threads", type=int, default=None,
                       help="for --path hybrid, the WSGI threads of the Flask branch")
    cli.serve_argument("--flags-file", default=None,
                       help="--path hybrid: the migration flag file (default: "
                            "$STREAMBRIDGE_FLAGS_FILE)")
    cli.serve_argument("--app", default=None,
                       help="--path hybrid: your Flask app behind the front, module:attribute "
                            "(e.g. yourpackage.wsgi:app; default: $STREAMBRIDGE_APP, else the "
                            "reference app)")
    cli.add_path("hybrid", _serve_hybrid)
    cli.add_command("flags", add_parser, run)


def _serve_hybrid(args: argparse.Namespace) -> int:
    from ._hybrid_serve import load_app, serve

    if args.app:
        try:
            load_app(args.app)  # a bad --app is one line here, not a worker crash
        except ValueError as e:
            print(f"streambridge: --app: {e}", file=sys.stderr)
            return 2
    serve(host=args.host, port=args.port, workers=args.workers, threads=args.threads,
          flags_file=args.flags_file, app=args.app, log_level=args.log_level)
    return 0
