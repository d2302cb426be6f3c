"""The backend's statements, built once per inventory with bind parameters (no I/O).

A statement object memoizes its cache key: executing the same object with new values
skips statement construction and cache-key generation, which were about a third of
the CPU of an acquire-and-succeed cycle (benchmarks/floor.py).

On PostgreSQL, data-modifying CTEs let one statement do what takes several on SQLite:
recording a batch writes the batch, its first log row and the job's cursor at once,
and finishing closes the batch and its log row at once. A single statement is atomic
by itself, so finishing and heartbeats need no BEGIN/COMMIT round trips either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ._dialects import dialect_named
from ._tables import BackendTables, unfinished

__all__ = [
    "RECORD_COLUMNS",
    "Statements",
    "build_statements",
    "current_generation",
    "db_now",
    "due_again",
    "frontier",
    "lease_expired",
    "lease_params",
]

# What a worker is handed about its batch: the columns returned by insert and reclaim.
RECORD_COLUMNS = (
    "id",
    "job_identifier",
    "range_start",
    "range_end",
    "weight",
    "item_count",
    "attempt",
    "max_attempts",
    "lease_expires_at",
)
_LOWEST, _HIGHEST = -(2**63), 2**63 - 1
p = sa.bindparam


def db_now(dialect: str) -> sa.ColumnElement[datetime]:
    """The database's clock when the statement runs: leases never depend on a worker's
    clock, and never on when the transaction started (see :mod:`._dialects`)."""
    return dialect_named(dialect).now()


def lease_expiry(dialect: str) -> sa.ColumnElement[datetime]:
    """:func:`db_now` plus the lease given by :func:`lease_params`."""
    return dialect_named(dialect).later()


def lease_params(dialect: str, seconds: float) -> dict[str, Any]:
    """The bind parameters of :func:`lease_expiry`."""
    return dialect_named(dialect).later_params(seconds)


def current_generation(tables: BackendTables, job: Any) -> sa.ScalarSelect[Any]:
    """The job's generation, as a scalar subquery (``job`` a value or an expression)."""
    jobs = tables.jobs
    return sa.select(jobs.c.generation).where(jobs.c.job_identifier == job).scalar_subquery()


def frontier(tables: BackendTables, job: Any) -> sa.ScalarSelect[Any]:
    """The lowest id of the job's unfinished batches in its current generation: the
    recursion frontier, one step on the partial index ix_<batches>_unfinished."""
    b = tables.batches
    return (
        sa.select(sa.func.min(b.c.id))
        .where(
            b.c.job_identifier == job,
            unfinished(b),
            b.c.generation == current_generation(tables, job),
        )
        .scalar_subquery()
    )


def lease_expired(b: sa.Table, now: sa.ColumnElement[datetime]) -> sa.ColumnElement[bool]:
    """A running batch whose lease ran out (statuses inline, as in the partial index
    ix_<batches>_reclaimable's predicate)."""
    return sa.and_(b.c.status == sa.literal_column("'running'"), b.c.lease_expires_at < now)


def due_again(b: sa.Table, now: sa.ColumnElement[datetime]) -> sa.ColumnElement[bool]:
    """A batch to hand out again: failed with attempts left and its retry backoff over,
    or handed back (released: no backoff, a release is no failure)."""
    return sa.or_(
        b.c.status == sa.literal_column("'released'"),
        sa.and_(
            b.c.status == sa.literal_column("'failed'"),
            b.c.attempt < b.c.max_attempts,
            sa.or_(b.c.retry_after.is_(None), b.c.retry_after <= now),
        ),
    )


@dataclass(frozen=True)
class Statements:
    """Every statement of the acquisition and finishing paths, for one dialect.

    ``record_batch`` and ``finish`` close the log row themselves where ``combined``
    (PostgreSQL); elsewhere ``open_log``, ``move_cursor`` and ``close_log`` follow them
    in the same transaction.
    """

    combined: bool
    lock_job: Any
    # PostgreSQL: lock_job with the first reclaim lookup (outside a window, in one)
    lock_and_look: tuple[Any, Any] | None
    store_definition: Any
    reclaim_candidate: Any
    reclaim_candidate_in_window: Any
    take_expired: Any
    take_failed: Any
    expire_exhausted: Any
    record_batch: Any
    open_log: Any
    move_cursor: Any
    close_log: Any
    finish: Any
    heartbeat: Any


def build_statements(tables: BackendTables, dialect: str, insert: Any) -> Statements:
    """Build the statements; ``insert`` is the dialect's insert (for ON CONFLICT)."""
    jobs, b, logs = tables.jobs, tables.batches, tables.logs
    now, later = db_now(dialect), lease_expiry(dialect)
    record = [b.c[name] for name in RECORD_COLUMNS]

    lock_job = (
        insert(jobs)
        .values(
            job_identifier=p("p_job"),
            source_kind=p("p_kind"),
            source=p("p_source"),
            id_column=p("p_id_column"),
            filter_text=p("p_filter_text"),
            definition=p("p_definition"),
            created_at=now,
            updated_at=now,
        )
        # DO UPDATE takes the row lock that SELECT ... FOR UPDATE would, and returns it.
        .on_conflict_do_update(index_elements=[jobs.c.job_identifier], set_={"updated_at": now})
        .returning(
            jobs.c.source_kind,
            jobs.c.source,
            jobs.c.id_column,
            jobs.c.filter_text,
            jobs.c.cursor,
            jobs.c.generation,
            jobs.c.definition,
            jobs.c.paused_at,
            jobs.c.pause_reason,
        )
    )
    store_definition = (
        sa.update(jobs)
        .where(jobs.c.job_identifier == p("p_job"))
        .values(definition=p("p_definition"))
    )

    # Statuses inline, as in the partial index ix_<batches>_reclaimable's predicate.
    expired = lease_expired(b, now)
    retryable = due_again(b, now)

    def candidate(generation: Any, in_window: bool) -> sa.Select[Any]:
        found = (
            sa.select(b.c.id, b.c.attempt, b.c.max_attempts, b.c.status)
            .where(
                b.c.job_identifier == p("p_job"),
                b.c.generation == generation,
                # Redundant, but SQLite's planner matches only this plain term to a partial
                # index (ix_<batches>_unfinished); PostgreSQL picks ix_<batches>_reclaimable.
                unfinished(b),
                sa.or_(expired, retryable),
            )
            .order_by(b.c.id)
            .limit(1)
        )
        if not in_window:
            return found
        # A backfill's window, in a statement of its own: a range_start bound in every
        # lookup would lead SQLite's planner to the (job, range_start) index and through
        # the job's whole history.
        return found.where(
            b.c.range_start >= sa.func.coalesce(p("p_id_start", type_=sa.BigInteger), _LOWEST),
            b.c.range_end <= sa.func.coalesce(p("p_id_end", type_=sa.BigInteger), _HIGHEST),
        )

    reclaim_candidate = candidate(p("p_generation"), in_window=False)
    reclaim_candidate_in_window = candidate(p("p_generation"), in_window=True)
    # Fenced on what the candidate query saw: a finish or heartbeat that committed in
    # between makes these match nothing.
    seen = sa.and_(b.c.id == p("p_batch_id"), b.c.attempt == p("p_attempt"))
    take = sa.update(b).values(
        status="running",
        attempt=b.c.attempt + 1,
        processing_start=now,
        processing_end=None,
        lease_expires_at=later,
        retry_after=None,
        worker=p("p_worker"),
    )
    expire_exhausted = (
        sa.update(b)
        .where(seen, expired)
        .values(status="failed", processing_end=now, lease_expires_at=None)
    )

    insert_batch = sa.insert(b).values(
        job_identifier=p("p_job"),
        generation=p("p_generation"),
        processing_start=now,
        range_start=p("p_range_start"),
        range_end=p("p_range_end"),
        weight=p("p_weight"),
        item_count=p("p_item_count"),
        attempt=1,
        max_attempts=p("p_max_attempts"),
        status="running",
        lease_expires_at=later,
        worker=p("p_worker"),
    )
    # Runs once per new batch only (reclaims reuse the row), under the job row's lock:
    # the counters of schema version 5 that status reads instead of the history.
    move_cursor = (
        sa.update(jobs)
        .where(jobs.c.job_identifier == p("p_job"))
        .values(
            cursor=p("p_range_end"),
            updated_at=now,
            generation_batches=jobs.c.generation_batches + 1,
            generation_weight=jobs.c.generation_weight + p("p_weight", type_=sa.Double),
            total_batches=jobs.c.total_batches + 1,
        )
    )
    open_log = sa.insert(logs).values(
        id=p("p_batch_id"),
        attempt=p("p_attempt"),
        processing_start=now,
        status="running",
        worker=p("p_worker"),
    )
    close_log = (
        sa.update(logs)
        .where(logs.c.id == p("p_batch_id"), logs.c.attempt == p("p_attempt"))
        .where(logs.c.status == "running")
        .values(status=p("p_status"), processing_end=now, logging=p("p_text"))
    )
    finish = (
        sa.update(b)
        .where(seen, b.c.status == "running")
        .values(
            status=p("p_status"),
            processing_end=now,
            lease_expires_at=None,
            result=p("p_result", type_=b.c.result.type),
            max_attempts=b.c.max_attempts + p("p_refund", type_=sa.Integer),
            # a failure's backoff (the lease parameters carry its delay); else none
            retry_after=sa.case((p("p_backoff", type_=sa.Boolean), later), else_=sa.null()),
        )
    )
    heartbeat = (
        sa.update(b)
        .where(seen, b.c.status == "running")
        .values(lease_expires_at=later)
        .returning(b.c.lease_expires_at)
    )

    combined = dialect_named(dialect).combined_writes
    lock_and_look: tuple[Any, Any] | None = None
    if combined:
        # The job's lock and the first reclaim lookup in one round trip, which the lock
        # is held for one statement less (16 workers on one job queue on that lock).
        # The lookup reads the statement's snapshot, taken before a wait for the lock:
        # a batch the lock's previous holder took since is then seen as free, and the
        # fenced take (on id and attempt) finds it gone and looks again, afresh.
        locked = lock_job.cte("locked_job")
        generation = sa.select(locked.c.generation).scalar_subquery()

        def with_lookup(in_window: bool) -> sa.Select[Any]:
            found = candidate(generation, in_window).subquery("candidate")
            return sa.select(
                *locked.c, *(found.c[k].label(f"candidate_{k}") for k in found.c.keys())
            ).select_from(locked.outerjoin(found, sa.true()))

        lock_and_look = (with_lookup(False), with_lookup(True))
        new = insert_batch.returning(*record).cte("new_batch")
        first_log = sa.insert(logs).from_select(
            ["id", "attempt", "processing_start", "status", "worker"],
            sa.select(new.c.id, sa.literal(1), now, sa.literal("running"), p("p_worker")),
        )
        record_batch: Any = sa.select(*(new.c[name] for name in RECORD_COLUMNS)).add_cte(
            first_log.cte("first_log"), move_cursor.cte("moved_cursor")
        )
        done = finish.returning(b.c.id, b.c.attempt, b.c.max_attempts).cte("finished")
        closed = (
            sa.update(logs)
            .where(logs.c.id == done.c.id, logs.c.attempt == done.c.attempt)
            .where(logs.c.status == "running")
            .values(status=p("p_status"), processing_end=now, logging=p("p_text"))
        )
        finish_stmt: Any = sa.select(done.c.max_attempts).add_cte(closed.cte("closed_log"))
    else:
        record_batch = insert_batch.returning(*record)
        finish_stmt = finish.returning(b.c.max_attempts)

    return Statements(
        combined=combined,
        lock_job=lock_job,
        lock_and_look=lock_and_look,
        store_definition=store_definition,
        reclaim_candidate=reclaim_candidate,
        reclaim_candidate_in_window=reclaim_candidate_in_window,
        take_expired=take.where(seen, expired).returning(*record),
        take_failed=take.where(seen, retryable).returning(*record),
        expire_exhausted=expire_exhausted,
        record_batch=record_batch,
        open_log=open_log,
        move_cursor=move_cursor,
        close_log=close_log,
        finish=finish_stmt,
        heartbeat=heartbeat,
    )
