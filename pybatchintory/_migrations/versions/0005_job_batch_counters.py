"""Batch counters on the jobs table, and an index of succeeded batches by end time.

Revision ID: 0005
Revises: 0004

- ``jobs.generation_batches``, ``jobs.generation_weight``: the number and total weight
  of the job's batches in its current generation; ``jobs.total_batches``: its batches
  of all generations. Kept by the acquisitions (each new batch) and recounted by a
  reset, so that ``status`` costs the same whatever the job's history;
- ``ix_<batches>_succeeded_end``, partial (``status = 'succeeded'``): a job's last
  success is one step from the end of it.

The columns are NOT NULL with the server default 0: a catalog change on either database
(PostgreSQL 11+ stores the default, SQLite's ADD COLUMN takes it). They are then set from
the existing rows by one aggregate over all batches (``recount_batches``), and the index
is built: both take time in proportion to the number of batches, in the upgrade's
transaction.
"""

from __future__ import annotations

from alembic import op

from pybatchintory._tables import BackendTables, recount_batches

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_COUNTERS = ("generation_batches", "generation_weight", "total_batches")


def upgrade(*, tables: BackendTables) -> None:
    schema = tables.metadata.schema
    jobs, batches = tables.jobs, tables.batches
    for name in _COUNTERS:
        column = jobs.c[name]
        op.add_column(jobs.name, column._copy(), schema=schema)
    # Every job's counters from its rows, with the statement a reset runs for one job.
    op.get_bind().execute(recount_batches(tables))
    index = f"ix_{batches.name}_succeeded_end"
    for each in batches.indexes:
        if each.name == index:
            each.create(op.get_bind(), checkfirst=True)
