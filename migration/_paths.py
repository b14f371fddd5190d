"""The serving paths ``streambridge serve --path`` offers.

A module of its own so that ``compare`` can ask which paths exist without importing
the CLI that imports it (that was a cycle, issue 12).
"""

from __future__ import annotations

PATHS = ("async", "legacy", "hybrid")
