"""The one table of serving paths: a path id and the ``streambridge serve`` it stands for.

A path id names one way the product serves the contract (``legacy-gevent``,
``hybrid-50``...). The tests run their contract scenarios on ``CONTRACT_PATHS``
(plus ``LOOP_PATHS`` where the loop matters), ``streambridge compare`` measures its
rows on some of them, and the benchmarks pick theirs from the same table.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class PathSpec:
    """How one path id is started.

    Attributes:
        serve: the ``serve --path`` value (``legacy``, ``async`` or ``hybrid``).
        args: further ``serve`` arguments (worker class, event loop).
        env: environment the path needs (the hybrid front's flag mode).
    """

    serve: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def serve_args(self) -> list[str]:
        """The ``serve`` arguments of this path (``--path`` first)."""
        return ["--path", self.serve, *self.args]


def _hybrid(mode: str) -> PathSpec:
    return PathSpec(serve="hybrid", env={"STREAMBRIDGE_FLAGS_MODE": mode})


PATHS: dict[str, PathSpec] = {
    "legacy-gthread": PathSpec(serve="legacy", args=("--worker-class", "gthread")),
    "legacy-gevent": PathSpec(serve="legacy", args=("--worker-class", "gevent")),
    # The asyncio loop named: with uvloop installed uvicorn's "auto" would pick uvloop.
    "async": PathSpec(serve="async", args=("--loop", "asyncio")),
    "async-uvloop": PathSpec(serve="async", args=("--loop", "uvloop")),
    # uvicorn's own choice (uvloop when installed): what a user's `serve` runs.
    "async-auto": PathSpec(serve="async"),
    # The hybrid front with a share of sticky buckets on async (the migration flag)...
    "hybrid-0": _hybrid("0"),
    "hybrid-50": _hybrid("50"),
    "hybrid-100": _hybrid("100"),
    # ... and at each end of the flag: every request to Flask, or every one native.
    "hybrid-legacy": _hybrid("legacy"),
    "hybrid-async": _hybrid("async"),
}

# Every path the contract suite runs each scenario on.
CONTRACT_PATHS: tuple[str, ...] = ("legacy-gthread", "legacy-gevent", "async", "hybrid-0",
                                   "hybrid-50", "hybrid-100")
# Paths only the loop-sensitive contract modules add (CI budget: the async path runs on
# uvloop there, not the whole suite twice).
LOOP_PATHS: tuple[str, ...] = ("async-uvloop",)


def serve_command(path_id: str, *, port: int = 0, args: Sequence[str] = ()) -> list[str]:
    """The command line that serves ``path_id`` on 127.0.0.1 ``port`` (0: ephemeral).

    The default log level prints the listening line a ``ServerProcess`` waits for.

    Raises:
        KeyError: ``path_id`` is not in ``PATHS``.
    """
    return [sys.executable, "-m", "async_core.cli", "serve", *PATHS[path_id].serve_args(),
            "--port", str(port), *args]
