"""The ``streambridge`` command line and the app ``serve --path async`` runs.

Permanent: ``serve`` (``--path async``), ``db`` and ``compare`` live here, so they
outlive the migration. ``legacy_bridge`` and ``migration`` add ``--path legacy``,
``--path hybrid`` and ``flags`` while they are installed (``_extensions.py`` says
how); this package never imports them.

=================  ==========================================================
module             one idea
=================  ==========================================================
``_commands.py``   the parser, ``CommandLine`` (what extensions add to), ``main``
``_extensions.py`` finding the optional extensions; the async app factory
``compare.py``     ``streambridge compare``: one workload through every path (its
                   servers and measurements: ``async_core.harness``)
``_report.py``     ``compare``'s text table and self-contained HTML report
``_rows.py``       ``compare``'s rows of several processes (background, Redis log,
``_polled.py``     Celery, thread queue) and the polled WSGI front two of them share
=================  ==========================================================
"""

from __future__ import annotations

from ._commands import CommandLine, build_cli, build_parser, main
from ._extensions import create_async_app

__all__ = ["CommandLine", "build_cli", "build_parser", "create_async_app", "main"]
