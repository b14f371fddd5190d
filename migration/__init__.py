"""What exists only while migrating: the flag, the hybrid front, the CLI and the docs.

May import both ``async_core`` and ``legacy_bridge``. Deleting ``legacy_bridge/``
and ``migration/`` at the end of a migration leaves a working ``async_core``.
"""
