"""The backend tables: one row per job, one per batch, one per attempt of a batch."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from .config import Settings

__all__ = [
    "BATCH_STATUSES",
    "RECLAIMABLE",
    "SUCCEEDED",
    "BackendTables",
    "UtcDateTime",
    "build_tables",
    "recount_batches",
    "status_type",
    "succeeded",
    "unfinished",
]

# The specification's running, succeeded and failed, and (schema version 4) released: a
# batch handed back unprocessed (release(), Ctrl-C, cancellation) that used no attempt,
# is handed out again at once and is never counted as a failure (docs/reference.md).
BATCH_STATUSES = ("running", "succeeded", "failed", "released")
# The reclaimable batches' predicate, as the partial index and the reclaim query spell it
# (PostgreSQL uses a partial index only when the query visibly implies its predicate).
RECLAIMABLE = (
    "status = 'running' OR status = 'released' OR (status = 'failed' AND attempt < max_attempts)"
)
# The succeeded batches' predicate, as the partial index ix_<batches>_succeeded_end and
# the last-success query spell it.
SUCCEEDED = "status = 'succeeded'"
# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware datetime")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        if not isinstance(moment, datetime):
            raise TypeError(f"expected a timestamp, got {type(moment).__name__}")
        if moment.tzinfo is None:
            return moment.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc)


def status_type(name: str, statuses: tuple[str, ...] = BATCH_STATUSES) -> sa.Enum:
    """The status column's type: VARCHAR(9) with a CHECK constraint named ``name``."""
    return sa.Enum(*statuses, name=name, native_enum=False, create_constraint=True, length=9)


@dataclass(frozen=True)
class BackendTables:
    """The three tables, bound to one MetaData."""

    metadata: sa.MetaData
    jobs: sa.Table
    batches: sa.Table
    logs: sa.Table


def build_tables(settings: Settings) -> BackendTables:
    """Describe the backend tables with the names and schema of ``settings``."""
    md = sa.MetaData(schema=settings.schema_name)
    b = settings.batches_table

    jobs = sa.Table(
        settings.jobs_table,
        md,
        sa.Column("job_identifier", sa.String(255), primary_key=True),
        # 'table' (a metadata table) or 'job' (the batches of an upstream job)
        sa.Column("source_kind", sa.String(8), nullable=False),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("id_column", sa.String(255), nullable=False),
        sa.Column("filter_text", sa.Text, nullable=False),
        # the highest source id this job has taken; NULL before its first batch
        sa.Column("cursor", sa.BigInteger, nullable=True),
        # bumped by a reset: ranges are disjoint within one generation of a job
        sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        # schema version 2: the job's definition as JSON (pybatchintory.job.job_definition),
        # written by its acquisitions; NULL for a job not acquired since version 1
        sa.Column("definition", sa.Text, nullable=True),
        # schema version 4: set while the job is paused (acquisitions hand out nothing)
        sa.Column("paused_at", UtcDateTime, nullable=True),
        sa.Column("pause_reason", sa.Text, nullable=True),
        # schema version 5: the job's batch counts, kept by the statement that records a
        # new batch (under this row's lock) and recounted by a reset, so that status
        # reads them instead of aggregating the job's whole history. The batches of the
        # current generation, their total weight (a running sum of doubles: exact for
        # integer weights up to 2**53, as the weight column), and the batches of all
        # generations.
        sa.Column("generation_batches", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("generation_weight", sa.Double, nullable=False, server_default="0"),
        sa.Column("total_batches", sa.BigInteger, nullable=False, server_default="0"),
    )

    batches = sa.Table(
        b,
        md,
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("job_identifier", sa.String(255), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
        sa.Column("processing_start", UtcDateTime, nullable=False),
        sa.Column("processing_end", UtcDateTime, nullable=True),
        sa.Column("range_start", sa.BigInteger, nullable=False),
        sa.Column("range_end", sa.BigInteger, nullable=False),
        # double precision: exact for integer byte counts up to 2**53, and fractional MiB
        sa.Column("weight", sa.Double, nullable=False),
        sa.Column("item_count", sa.BigInteger, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("status", status_type(f"{b}_status"), nullable=False),
        sa.Column("lease_expires_at", UtcDateTime, nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("result", sa.JSON(none_as_null=True), nullable=True),
        # schema version 4: a failed batch is not handed out again before this time
        # (retry backoff); NULL for any other status
        sa.Column("retry_after", UtcDateTime, nullable=True),
        sa.CheckConstraint("range_start <= range_end", name=f"{b}_range_ordered"),
        sa.Index(f"ix_{b}_job_range", "job_identifier", "range_start"),
        # Unfinished batches of a job's generation: the recursion frontier (the lowest
        # such id) is one index step, however much succeeded history the job has.
        sa.Index(
            f"ix_{b}_unfinished",
            "job_identifier",
            "generation",
            "id",
            postgresql_where=sa.text("status <> 'succeeded'"),
            sqlite_where=sa.text("status <> 'succeeded'"),
        ),
        # schema version 5: a job's last success (status), one step from the end of
        # this index however many batches succeeded; the status inline, as queries
        # spell it (see SUCCEEDED).
        sa.Index(
            f"ix_{b}_succeeded_end",
            "job_identifier",
            "processing_end",
            postgresql_where=sa.text(SUCCEEDED),
            sqlite_where=sa.text(SUCCEEDED),
        ),
        # What reclaim may hand out: running, or failed with attempts left. Batches out
        # of attempts are left out, so they cannot slow every acquisition down.
        sa.Index(
            f"ix_{b}_reclaimable",
            "job_identifier",
            "generation",
            "id",
            postgresql_where=sa.text(RECLAIMABLE),
            sqlite_where=sa.text(RECLAIMABLE),
        ),
    )

    logs = sa.Table(
        settings.logs_table,
        md,
        sa.Column("id", sa.BigInteger, sa.ForeignKey(batches.c.id), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("processing_start", UtcDateTime, nullable=False),
        sa.Column("processing_end", UtcDateTime, nullable=True),
        sa.Column("status", status_type(f"{settings.logs_table}_status"), nullable=False),
        sa.Column("logging", sa.Text, nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
    )
    return BackendTables(md, jobs, batches, logs)


def unfinished(batches: sa.Table) -> sa.ColumnElement[bool]:
    """``status <> 'succeeded'`` with the value inline: PostgreSQL uses the partial
    index only when the query's predicate visibly implies the index's."""
    return batches.c.status != sa.literal_column("'succeeded'")


def recount_batches(tables: BackendTables, job: Any = None) -> sa.Update:
    """Set the batch counters of the jobs table (schema version 5) from the batch rows:
    those of ``job`` (a value or bind parameter), or of every job when None.

    One aggregate pass over the job's batches (all of them: it costs what the history
    costs), for a reset, the upgrade to version 5 and the benchmarks' bulk loads;
    acquisitions count each new batch as they record it instead. Jobs without batches
    are left alone (their counters are 0 from the start). Builds the statement only:
    an UPDATE ... FROM, which SQLite has since 3.33 (the library needs 3.35 for
    RETURNING anyway)."""
    jobs, b = tables.jobs, tables.batches
    owner = jobs.alias("owner")  # its own name: no correlation with the updated row
    current = b.c.generation == owner.c.generation
    counts = (
        sa.select(
            b.c.job_identifier.label("job"),
            sa.func.count().label("total"),
            sa.func.coalesce(sa.func.sum(sa.case((current, 1), else_=0)), 0).label("batches"),
            sa.func.coalesce(sa.func.sum(sa.case((current, b.c.weight), else_=0.0)), 0.0).label(
                "weight"
            ),
        )
        .select_from(b.join(owner, b.c.job_identifier == owner.c.job_identifier))
        .group_by(b.c.job_identifier)
    )
    if job is not None:
        counts = counts.where(b.c.job_identifier == job)
    sub = counts.subquery("batch_counts")
    return (
        sa.update(jobs)
        .where(jobs.c.job_identifier == sub.c.job)
        .values(
            generation_batches=sub.c.batches,
            generation_weight=sub.c.weight,
            total_batches=sub.c.total,
        )
    )


def succeeded(batches: sa.Table) -> sa.ColumnElement[bool]:
    """``status = 'succeeded'`` with the value inline (SUCCEEDED, the predicate of the
    partial index ix_<batches>_succeeded_end), for PostgreSQL to match that index."""
    return batches.c.status == sa.literal_column("'succeeded'")
