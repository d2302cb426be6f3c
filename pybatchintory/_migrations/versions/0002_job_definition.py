"""jobs.definition: a nullable text column for the job's stored definition (JSON).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pybatchintory._tables import BackendTables

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade(*, tables: BackendTables) -> None:
    # Nullable, no default: PostgreSQL and SQLite only change the catalog, whatever the
    # table's size, and code that does not know the column keeps working.
    op.add_column(
        tables.jobs.name,
        sa.Column("definition", sa.Text, nullable=True),
        schema=tables.metadata.schema,
    )
