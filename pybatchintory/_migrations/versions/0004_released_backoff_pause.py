"""Released batches, retry backoff and paused jobs.

Revision ID: 0004
Revises: 0003

- ``released`` joins the status enum of batches and logs (a batch handed back
  unprocessed is no failure), and the reclaimable index's predicate includes it;
- ``batches.retry_after``: when a failed batch may be handed out again;
- ``jobs.paused_at`` and ``jobs.pause_reason``: a paused job hands out nothing.

The new columns are nullable without defaults: a catalog change on either database,
whatever the tables' size. The status CHECK constraints change in place on PostgreSQL
(one validating scan); SQLite cannot alter a constraint, so there the batches and logs
tables are rebuilt (Alembic's batch mode: copy, drop, rename), once, in the upgrade's
transaction.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pybatchintory._tables import BATCH_STATUSES, BackendTables

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade(*, tables: BackendTables) -> None:
    schema = tables.metadata.schema
    batches, logs, jobs = tables.batches, tables.logs, tables.jobs
    op.add_column(batches.name, sa.Column("retry_after", batches.c.retry_after.type), schema=schema)
    op.add_column(jobs.name, sa.Column("paused_at", jobs.c.paused_at.type), schema=schema)
    op.add_column(jobs.name, sa.Column("pause_reason", sa.Text), schema=schema)

    reclaimable = f"ix_{batches.name}_reclaimable"
    op.drop_index(reclaimable, table_name=batches.name, schema=schema)
    if op.get_bind().dialect.name == "sqlite":
        for table in (batches, logs):
            # copy_from: today's definition, whose status type carries the new CHECK.
            with op.batch_alter_table(
                table.name, schema=schema, recreate="always", copy_from=table
            ):
                pass
    else:
        for table in (batches, logs):
            name = f"{table.name}_status"
            op.drop_constraint(name, table.name, schema=schema, type_="check")
            op.create_check_constraint(
                name, table.name, sa.column("status").in_(BATCH_STATUSES), schema=schema
            )
    for index in batches.indexes:
        if index.name == reclaimable:
            index.create(op.get_bind(), checkfirst=True)
