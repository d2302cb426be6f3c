"""The exclusion constraint on numrange: ids up to 2**63 - 1 (PostgreSQL).

Revision ID: 0003
Revises: 0002

Version 2 tables may carry the constraint on ``int8range(range_start, range_end, '[]')``,
which PostgreSQL stores as ``[start, end + 1)``: out of range for a batch that ends at
2**63 - 1. The replacement itself is done by the exclusion-constraint step that follows
every upgrade (``_add_exclusion_constraint``: it replaces an int8range constraint by
the numrange one, in a savepoint, and leaves a table without one as it is), so this
revision only moves the version on; SQLite has no such constraint.

"""

from __future__ import annotations

from pybatchintory._tables import BackendTables

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade(*, tables: BackendTables) -> None:
    del tables  # the constraint step after the upgrade does the work (see above)
