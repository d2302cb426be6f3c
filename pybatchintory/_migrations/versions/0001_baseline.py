"""Baseline: the tables as pybatchintory 0.1.0 created them, before versioning.

Never run as a step: a new database gets today's tables and the newest version at once,
and unversioned tables (which can only be these) are stamped with this revision.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from pybatchintory._tables import BackendTables

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade(*, tables: BackendTables) -> None:
    """Nothing to do: the baseline is the first version."""
