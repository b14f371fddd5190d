"""The webhook tests use the store's databases (SQLite file and a real PostgreSQL)."""

from __future__ import annotations

from tests.store.conftest import db_url, postgres

__all__ = ["db_url", "postgres"]
