"""The ``streambridge`` command line: ``serve``, ``db`` and ``compare``, plus what extensions add.

``serve --path async`` is this package's own; ``--path legacy`` and ``--path hybrid``
and the ``flags`` command come from ``legacy_bridge`` and ``migration`` when they
are installed (``_extensions.py``). Every command line is the same with or without
them; a path whose package is gone is a one-line error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn, TypeAlias, cast

from ._extensions import load_extensions

if TYPE_CHECKING:
    SubParsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

Run = Callable[[argparse.Namespace], int]

# Every serving path ``serve --path`` knows, and the package that brings each one
# that this package does not serve itself.
PATHS = ("async", "legacy", "hybrid")
PROVIDED_BY = {"legacy": "legacy_bridge", "hybrid": "migration"}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump): ``streambridge serve: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


class CommandLine:
    """The ``streambridge`` parser being built, and what each command and path runs.

    An extension's ``register(cli)`` calls ``add_path``, ``serve_argument`` and
    ``add_command`` on it.

    Attributes:
        parser: the top-level parser.
        serve: the ``serve`` subcommand's parser.
        paths: the ``--path`` values served here, each with the function that serves it.
        commands: the subcommands other than ``serve``, each with the function it runs.
    """

    def __init__(self) -> None:
        self.parser = _Parser(prog="streambridge", description="The streambridge command line.")
        self._sub = cast("SubParsers", self.parser.add_subparsers(dest="command", required=True))
        self.serve = self._sub.add_parser(
            "serve", help="run the reference server on its embedded defaults")
        self.paths: dict[str, Run] = {}
        self.commands: dict[str, Run] = {}
        self._serve_options: dict[str, argparse.Action] = {}

    def add_path(self, name: str, run: Run) -> None:
        """Serve ``--path name`` with ``run(args)`` (it returns the exit status).

        Raises:
            ValueError: ``name`` is not one of ``PATHS`` (command lines do not change).
        """
        if name not in PATHS:
            raise ValueError(f"unknown serving path {name!r}; known: {', '.join(PATHS)}")
        self.paths[name] = run

    def serve_argument(self, *flags: str, **kwargs: object) -> argparse.Action:
        """Add an option to ``serve``, as ``ArgumentParser.add_argument`` does.

        An option that two paths share (``--threads``) is added by the first; the
        second's ``help`` is appended to it.
        """
        existing = self._serve_options.get(flags[0])
        if existing is not None:
            existing.help = f"{existing.help}; {kwargs.get('help', '')}".rstrip("; ")
            return existing
        action = self.serve.add_argument(*flags, **kwargs)  # type: ignore[arg-type]
        self._serve_options[flags[0]] = action
        return action

    def add_command(self, name: str, add_parser: Callable[[SubParsers], None],
                    run: Run) -> None:
        """Add the subcommand ``name``: ``add_parser(sub)`` declares it, ``run(args)`` runs it."""
        add_parser(self._sub)
        self.commands[name] = run


def build_cli() -> CommandLine:
    """The command line with this package's commands and every installed extension's."""
    cli = CommandLine()
    cli.serve_argument("--path", choices=PATHS, default="async",
                       help="which serving path to run (default: async)")
    cli.serve_argument("--host", default="127.0.0.1",
                       help="interface to bind (default: %(default)s)")
    cli.serve_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one")
    cli.serve_argument("--workers", type=int, default=1, help="worker processes")
    cli.serve_argument("--log-level", default="info", help="server log level")
    cli.serve_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                       help="--path async: uvicorn's event loop (default: auto, uvloop when "
                            "it is installed)")
    cli.add_path("async", _serve_async)
    from . import compare

    cli.add_command("compare", compare.add_parser,
                    lambda args: compare.main(args, served=tuple(cli.paths)))
    from ..store import add_db_parser, run_db

    cli.add_command("db", add_db_parser, run_db)
    for extension in load_extensions():
        extension.register(cli)
    return cli


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``streambridge``."""
    return build_cli().parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    cli = build_cli()
    args = cli.parser.parse_args(argv)
    if args.command != "serve":
        return cli.commands[args.command](args)
    if args.workers < 1:
        print("streambridge: --workers must be >= 1", file=sys.stderr)
        return 2
    run = cli.paths.get(args.path)
    if run is None:
        print(f"streambridge: --path {args.path} needs the {PROVIDED_BY[args.path]} package, "
              f"which is not installed (available: {', '.join(cli.paths)})", file=sys.stderr)
        return 2
    from ..store import preflight

    problem = preflight(args.host)  # keys, bind address, database, webhooks
    if problem is not None:
        print(f"streambridge: {problem}", file=sys.stderr)
        return 2
    return run(args)


def _serve_async(args: argparse.Namespace) -> int:
    from .._serve import serve

    # The factory hands the app a sync runner when an extension offers one.
    serve(host=args.host, port=args.port, workers=args.workers, log_level=args.log_level,
          app="async_core.cli:create_async_app", loop=args.loop)
    return 0
