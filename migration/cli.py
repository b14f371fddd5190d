"""The ``streambridge`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from ._paths import PATHS


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump): ``streambridge serve: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``streambridge``."""
    parser = _Parser(prog="streambridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the reference server on its embedded defaults")
    serve.add_argument("--path", choices=PATHS, default="async",
                       help="which serving path to run (default: async)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one")
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.add_argument("--log-level", default="info", help="server log level")
    serve.add_argument("--worker-class", choices=("gthread", "gevent"), default="gthread",
                       help="gunicorn worker class for --path legacy (default: gthread)")
    serve.add_argument("--threads", type=int, default=None,
                       help="gthread threads per worker, one per open stream (default: 64); "
                            "for --path hybrid, the WSGI threads of the Flask branch")
    serve.add_argument("--flags-file", default=None,
                       help="--path hybrid: the migration flag file (default: "
                            "$STREAMBRIDGE_FLAGS_FILE)")
    serve.add_argument("--app", default=None,
                       help="--path hybrid: your Flask app behind the front, module:attribute "
                            "(e.g. yourpackage.wsgi:app; default: $STREAMBRIDGE_APP, else the "
                            "reference app)")
    serve.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                       help="--path async: uvicorn's event loop (default: auto, uvloop when "
                            "it is installed)")
    from ._flagfile import add_parser as add_flags_parser

    add_flags_parser(sub)
    from .compare import add_parser as add_compare_parser

    add_compare_parser(sub)
    from async_core.store import add_db_parser

    add_db_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        if args.workers < 1:
            print("streambridge: --workers must be >= 1", file=sys.stderr)
            return 2
        from async_core.store import preflight

        problem = preflight(args.host)  # keys, bind address, database, webhooks
        if problem is not None:
            print(f"streambridge: {problem}", file=sys.stderr)
            return 2
        if args.path == "hybrid":
            from ._hybrid_serve import load_app
            from ._hybrid_serve import serve as serve_hybrid

            if args.app:
                try:
                    load_app(args.app)  # a bad --app is one line here, not a worker crash
                except ValueError as e:
                    print(f"streambridge: --app: {e}", file=sys.stderr)
                    return 2
            serve_hybrid(host=args.host, port=args.port, workers=args.workers,
                         threads=args.threads, flags_file=args.flags_file, app=args.app,
                         log_level=args.log_level)
            return 0
        if args.path == "legacy":
            from legacy_bridge import serve as serve_legacy

            serve_legacy(host=args.host, port=args.port, workers=args.workers,
                         worker_class=args.worker_class, threads=args.threads,
                         log_level=args.log_level)
            return 0
        from async_core import serve

        # The native app plus a janus runner, so sync agent forms can run here too.
        serve(host=args.host, port=args.port, workers=args.workers, log_level=args.log_level,
              app="migration.asgi:create_async_app", loop=args.loop)
        return 0
    if args.command == "db":
        from async_core.store import run_db

        return run_db(args)
    if args.command == "flags":
        from ._flagfile import run as run_flags

        return run_flags(args)
    if args.command == "compare":
        from .compare import main as run_compare

        return run_compare(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
