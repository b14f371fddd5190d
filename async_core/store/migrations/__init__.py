"""Alembic migrations of the store (applied by ``streambridge db upgrade``)."""
