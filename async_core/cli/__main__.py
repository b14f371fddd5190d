"""``python -m async_core.cli``: the ``streambridge`` command."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
