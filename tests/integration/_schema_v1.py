"""FROZEN: the backend tables at schema version 1, as pybatchintory 0.1.0 created them.

A copy of ``build_tables`` and the exclusion constraint of 0.1.0 (commit 7e4f6a0),
deliberately not imported from the package: the migration tests start from tables made
by this file, so it must never change with the library. Timestamps are the plain
``DateTime(timezone=True)`` that 0.1.0's ``UtcDateTime`` decorator stored as.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["V1_RECLAIMABLE", "build_v1_tables", "create_v1_tables"]

V1_RECLAIMABLE = "status = 'running' OR (status = 'failed' AND attempt < max_attempts)"
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def _status_type(name: str) -> sa.Enum:
    return sa.Enum(
        "running",
        "succeeded",
        "failed",
        name=name,
        native_enum=False,
        create_constraint=True,
        length=9,
    )


def build_v1_tables(
    schema: str | None,
    jobs_table: str = "inventory_jobs",
    batches_table: str = "inventory",
    logs_table: str = "inventory_logs",
) -> sa.MetaData:
    md = sa.MetaData(schema=schema)
    b = batches_table
    sa.Table(
        jobs_table,
        md,
        sa.Column("job_identifier", sa.String(255), primary_key=True),
        sa.Column("source_kind", sa.String(8), nullable=False),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("id_column", sa.String(255), nullable=False),
        sa.Column("filter_text", sa.Text, nullable=False),
        sa.Column("cursor", sa.BigInteger, nullable=True),
        sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    batches = sa.Table(
        b,
        md,
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("job_identifier", sa.String(255), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
        sa.Column("processing_start", _TS, nullable=False),
        sa.Column("processing_end", _TS, nullable=True),
        sa.Column("range_start", sa.BigInteger, nullable=False),
        sa.Column("range_end", sa.BigInteger, nullable=False),
        sa.Column("weight", sa.Double, nullable=False),
        sa.Column("item_count", sa.BigInteger, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("status", _status_type(f"{b}_status"), nullable=False),
        sa.Column("lease_expires_at", _TS, nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("result", sa.JSON(none_as_null=True), nullable=True),
        sa.CheckConstraint("range_start <= range_end", name=f"{b}_range_ordered"),
        sa.Index(f"ix_{b}_job_range", "job_identifier", "range_start"),
        sa.Index(
            f"ix_{b}_unfinished",
            "job_identifier",
            "generation",
            "id",
            postgresql_where=sa.text("status <> 'succeeded'"),
            sqlite_where=sa.text("status <> 'succeeded'"),
        ),
        sa.Index(
            f"ix_{b}_reclaimable",
            "job_identifier",
            "generation",
            "id",
            postgresql_where=sa.text(V1_RECLAIMABLE),
            sqlite_where=sa.text(V1_RECLAIMABLE),
        ),
    )
    sa.Table(
        logs_table,
        md,
        sa.Column("id", sa.BigInteger, sa.ForeignKey(batches.c.id), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("processing_start", _TS, nullable=False),
        sa.Column("processing_end", _TS, nullable=True),
        sa.Column("status", _status_type(f"{logs_table}_status"), nullable=False),
        sa.Column("logging", sa.Text, nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
    )
    return md


async def create_v1_tables(
    conn: AsyncConnection, schema: str | None, batches_table: str = "inventory"
) -> sa.MetaData:
    """Create the version-1 tables (and, on PostgreSQL, 0.1.0's exclusion constraint)."""
    md = build_v1_tables(schema, batches_table=batches_table)
    await conn.run_sync(md.create_all)
    if conn.dialect.name == "postgresql":
        table = f'"{schema}"."{batches_table}"' if schema else f'"{batches_table}"'
        try:
            async with conn.begin_nested():
                await conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS btree_gist"))
                await conn.execute(
                    sa.text(
                        f'ALTER TABLE {table} ADD CONSTRAINT "{batches_table}_ranges_disjoint" '
                        "EXCLUDE USING gist (job_identifier WITH =, generation WITH =, "
                        "int8range(range_start, range_end, '[]') WITH &&)"
                    )
                )
        except DBAPIError:
            pass  # as 0.1.0: the constraint is optional
    return md
