"""``python -m migration.cli``: the ``streambridge`` command under its old module name.

The command line itself is permanent and lives in ``async_core.cli``; this
package only adds ``serve --path hybrid`` and ``flags`` to it (``commands.py``).
"""

from __future__ import annotations

import sys

from async_core.cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
