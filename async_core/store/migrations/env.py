"""Alembic environment: runs on a connection handed in by ``store.migrate``.

The store runs migrations through its own async engine (``AsyncConnection.run_sync``)
so that one code path serves SQLite and PostgreSQL and no second event loop is
started; ``config.attributes["connection"]`` carries that connection here.
"""

from __future__ import annotations

from alembic import context

from async_core.store._schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `streambridge db upgrade`, not the alembic CLI")
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
