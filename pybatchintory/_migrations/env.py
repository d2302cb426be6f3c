"""Alembic's environment for pybatchintory's own migrations.

Run in-process only, by :mod:`pybatchintory._migrations`, on the connection it hands
over in ``config.attributes`` (Alembic's documented recipe for sharing a connection):
no ``alembic.ini``, no URL. The table names and schema are the inventory's settings, so
the revision scripts receive the :class:`~pybatchintory._tables.BackendTables` as the
``tables`` keyword of ``upgrade()``.
"""

from __future__ import annotations

from alembic import context

_attributes = context.config.attributes
_tables = _attributes["tables"]

context.configure(
    connection=_attributes["connection"],
    version_table=_attributes["version_table"],
    version_table_schema=_tables.metadata.schema,
)
# The caller's transaction is already open (it holds the migration lock): Alembic then
# begins nothing of its own, and every step commits or rolls back with the caller's.
with context.begin_transaction():
    context.run_migrations(tables=_tables)
