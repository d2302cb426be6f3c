"""Status, backlog and the job list.

Everything here reads the backend tables with index lookups or aggregates over one
job's rows; only :func:`reset_job` writes, under the same job lock as an acquisition.

A job row keeps its definition (``pybatchintory.job.job_definition``): a mapping filter
is stored as data and rebuilt exactly, so ``status("name")`` counts the backlog with the
job's own filter and weight column. An expression filter is kept only as ``filter_text``,
the SQL that SQLAlchemy rendered with literal binds, to refuse a second source. Running
that text again would execute SQL read from the inventory database on the metadata
database, so it is done only when the caller opts in (``trust_stored_filter=True``);
otherwise the caller passes the Job (or its filter), checked against the stored text."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ._engines import backend_errors, read_connection
from ._forecast import forecast_of
from ._horizon import report
from ._idle import frontier_reason, nothing_new_reason, paused_reason, window_reason
from ._reports import Backlog, HorizonReport, JobStatus, JobSummary
from ._source import PARAMS_DIGEST, Source, job_source, narrowed, reflect_table_source
from ._statements import current_generation, db_now, frontier
from ._storage import Storage, StoredJob
from ._tables import BackendTables, succeeded, unfinished
from .exceptions import (
    BackendError,
    HorizonUnavailableError,
    InvalidArgumentError,
    JobSourceMismatchError,
)
from .job import Filter, Job

# -- helpers -------------------------------------------------------------------------


async def table_source(
    store: Storage,
    job_row: Any,
    filter: Filter,
    *,
    trust_stored_filter: bool,
    weight_column: str | None,
    item_columns: Iterable[str] | None = None,
) -> Source:
    """The job's metadata table with the given filter, checked against the stored text
    (or, with ``trust_stored_filter``, the stored text itself)."""
    stored = job_row.filter_text
    use_stored = trust_stored_filter and filter is None and stored
    if use_stored and PARAMS_DIGEST in stored:
        raise InvalidArgumentError(
            f"job {job_row.job_identifier!r}'s filter was stored as a digest, not as runnable "
            "SQL; pass the job's filter with filter=..."
        )
    async with backend_errors("reflecting the source table", store.meta_engine):
        source = await reflect_table_source(
            store.meta_engine,
            job_row.source,
            id_column=job_row.id_column,
            weight_column=None,
            item_columns=item_columns,
            filter=sa.text(stored) if use_stored else filter,
        )
    if not use_stored:
        _check_binding(job_row, source)
    if weight_column is not None and weight_column in source.table.c:
        # replace(), not assignment: the source's statements are built from its columns
        return dataclasses.replace(source, weight_col=source.table.c[weight_column])
    return source


def _check_binding(job_row: Any, source: Source) -> None:
    stored = job_row.filter_text
    if not source.binding.accepts(dataclasses.replace(source.binding, filter_text=stored)):
        given = source.binding.filter_text or "no filter"
        raise JobSourceMismatchError(
            f"job {job_row.job_identifier!r} was bound to filter "
            f"{stored or 'none'}, not {given}; pass the job's own filter "
            "(or trust_stored_filter=True / --trust-stored-filter to run the stored SQL)"
        )


async def _count_ahead(
    source: Source, cursor: int | None, id_start: int | None, id_end: int | None
) -> Backlog:
    if cursor is not None and cursor >= 2**63 - 1:  # no 64-bit id after it (issue 13, item 5)
        return Backlog(0, 0.0 if source.weight_col is not None else None)
    starts = [v for v in (id_start, None if cursor is None else cursor + 1) if v is not None]
    weight = sa.func.sum(source.weight_col) if source.weight_col is not None else sa.null()
    query = sa.select(sa.func.count(), weight).select_from(source.table).where(source.where)
    if starts:  # no bound otherwise: -2**63 does not fit an int4 id's parameter
        query = query.where(source.id_col >= max(starts))
    if id_end is not None:
        query = query.where(source.id_col <= id_end)
    async with read_connection(source.engine) as conn:
        items, total = (await conn.execute(query)).one()
    has_weight = source.weight_col is not None
    return Backlog(int(items), float(total or 0) if has_weight else None)


async def backlog_of(
    store: Storage, source: Source, job: str, id_start: int | None, id_end: int | None
) -> Backlog:
    """The backlog of ``job`` over ``source``: matching items after its cursor, in the window."""
    jobs = store.tables.jobs
    async with store.reading(f"reading job {job!r}") as conn:
        cursor = await conn.scalar(sa.select(jobs.c.cursor).where(jobs.c.job_identifier == job))
    async with backend_errors(f"counting the backlog of job {job!r}", source.engine):
        return await _count_ahead(source, cursor, id_start, id_end)


async def batch_ranges(store: Storage, ids: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """``(id, range_start, range_end, attempt)`` of the given batches, for log lines."""
    if not ids:
        return []
    b = store.tables.batches
    query = sa.select(b.c.id, b.c.range_start, b.c.range_end, b.c.attempt).where(
        b.c.id.in_(list(ids))
    )
    async with store.reading("reading batches") as conn:
        rows = (await conn.execute(query.order_by(b.c.id))).all()
    return [(int(r.id), int(r.range_start), int(r.range_end), int(r.attempt)) for r in rows]


# -- status and the job list -----------------------------------------------------------


async def job_status(
    store: Storage,
    job: Job | str,
    *,
    filter: Filter = None,
    id_start: int | None = None,
    id_end: int | None = None,
    weight_column: str | None = None,
    trust_stored_filter: bool = False,
    time_column: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> JobStatus:
    """The status of ``job`` (see :class:`JobStatus`); ``since``/``until`` count the
    backlog in that time window only (by ``time_column``, default the job's)."""
    backend = store.backend
    name = job.job_identifier if isinstance(job, Job) else job
    stored = await store.stored_job(name)
    row = stored.row
    async with store.reading(f"reading the status of job {name!r}") as conn:
        agg = (await conn.execute(status_counts(store.tables, backend.dialect, name))).one()
    gen_batches, gen_weight, all_batches, last_ok = agg[:4]
    (
        open_count,
        open_weight,
        running,
        running_weight,
        failed,
        failed_weight,
        retryable,
        out_of_attempts,
        expired,
        oldest,
        earliest,
        released_count,
        next_retry,
    ) = agg[4:]
    # Succeeded = the generation's batches less its unfinished ones; superseded = the
    # batches of earlier generations (the counters of schema version 5, see _tables).
    counts = [
        int(v or 0)
        for v in (
            running,
            int(gen_batches or 0) - int(open_count or 0),
            failed,
            retryable,
            out_of_attempts,
            int(all_batches or 0) - int(gen_batches or 0),
            expired,
        )
    ]
    # A difference of float sums: with no succeeded batch it is 0, not a rounding residue.
    succeeded_weight = float(gen_weight or 0) - float(open_weight or 0) if counts[1] else 0.0
    weights = [float(v or 0) for v in (running_weight, succeeded_weight, failed_weight)]

    definition = job if isinstance(job, Job) else stored.job
    if definition is not None:
        id_start = definition.id_start if id_start is None else id_start
        id_end = definition.id_end if id_end is None else id_end
    frontier = await _frontier(store, row.source) if row.source_kind == "job" else None
    backlog: Backlog | None = None
    note: str | None = None
    try:
        source = await _backlog_source(
            store, stored, job, filter, weight_column, trust_stored_filter
        )
        if isinstance(source, str):
            note = source
        else:
            own = definition.time_column if definition is not None else None
            source = narrowed(source, time_column or own, since, until)
            backlog = await backlog_of(store, source, name, id_start, id_end)
    except BackendError as exc:
        # The inventory's own counts stand; only the backlog needs the metadata table.
        note = f"the metadata database could not be read, so only the inventory's own counts are shown: {exc}"
    stored_definition = json.loads(row.definition) if row.definition else None
    idle = paused_reason(row.paused_at, row.pause_reason)
    if idle is None:
        idle = window_reason(row.cursor, id_start, id_end)
    if idle is None and row.source_kind == "job":
        idle = await frontier_reason(store, row.source)
    if idle is None and backlog is not None and backlog.items == 0:
        idle = nothing_new_reason(row.cursor, id_end)
    horizon = None
    if row.source_kind == "table" and store.meta_engine.dialect.name == "postgresql":
        try:
            horizon = await _horizon(store, row)
        except BackendError:
            pass  # the note above already says the metadata database could not be read
    if idle is None and horizon is not None and horizon.held_by:
        idle = (
            f"the exact horizon holds at id {_cell(horizon.settled_id)} (highest visible "
            f"{_cell(horizon.highest_visible_id)}): {len(horizon.held_by)} open writer "
            "transaction(s) may still commit lower ids"
        )
    forecast = await forecast_of(store, name, backlog, definition)
    return JobStatus(
        job_identifier=row.job_identifier,
        source_kind=row.source_kind,
        source=row.source,
        filter_text=row.filter_text,
        cursor=row.cursor,
        generation=row.generation,
        created_at=row.created_at,
        updated_at=row.updated_at,
        running=counts[0],
        running_weight=weights[0],
        succeeded=counts[1],
        succeeded_weight=weights[1],
        failed=counts[2],
        failed_weight=weights[2],
        retryable=counts[3],
        out_of_attempts=counts[4],
        superseded=counts[5],
        expired_leases=counts[6],
        oldest_running_start=oldest,
        earliest_lease_expiry=earliest,
        last_success_at=last_ok,
        frontier_batch_id=frontier,
        backlog=backlog,
        backlog_note=note,
        definition=stored_definition,
        idle_reason=idle,
        horizon=horizon,
        released=int(released_count or 0),
        next_retry_at=next_retry,
        paused_at=row.paused_at,
        pause_reason=row.pause_reason,
        forecast=forecast,
    )


def status_counts(tables: BackendTables, dialect: str, job: str) -> sa.Select[Any]:
    """The statement behind a job's status counts, whose cost does not grow with the
    job's history: the job row's counters (schema version 5), its last success (one
    step on ix_<batches>_succeeded_end), and one aggregate over the unfinished batches
    of its current generation (the partial index ix_<batches>_unfinished). One
    statement, so that counters and rows come from one snapshot: a batch recorded
    meanwhile is in both or in neither."""
    b, jobs = tables.batches, tables.jobs
    now = db_now(dialect)
    running = b.c.status == "running"
    failed = b.c.status == "failed"
    released = b.c.status == "released"
    waiting = sa.and_(failed, b.c.attempt < b.c.max_attempts)

    def count(*conds: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
        return sa.func.sum(sa.case((sa.and_(*conds), 1), else_=0))

    def weight(cond: sa.ColumnElement[bool]) -> sa.ColumnElement[float]:
        return sa.func.sum(sa.case((cond, b.c.weight), else_=0))

    def counter(column: sa.Column[Any]) -> sa.ScalarSelect[Any]:
        return sa.select(column).where(jobs.c.job_identifier == job).scalar_subquery()

    # The status inline (succeeded()), so that PostgreSQL matches the partial index;
    # newest first, NULLs left out (none is NULL, but DESC puts NULLs first on PostgreSQL).
    last_success = (
        sa.select(b.c.processing_end)
        .where(
            b.c.job_identifier == job,
            succeeded(b),
            b.c.processing_end.is_not(None),
        )
        .order_by(b.c.processing_end.desc())
        .limit(1)
        .scalar_subquery()
    )
    return sa.select(
        counter(jobs.c.generation_batches),
        counter(jobs.c.generation_weight),
        counter(jobs.c.total_batches),
        last_success,
        sa.func.count(),
        sa.func.sum(b.c.weight),
        count(running),
        weight(running),
        count(failed),
        weight(failed),
        count(waiting),
        count(failed, b.c.attempt >= b.c.max_attempts),
        count(running, b.c.lease_expires_at < now),
        sa.func.min(sa.case((running, b.c.processing_start))),
        sa.func.min(sa.case((running, b.c.lease_expires_at))),
        count(released),
        sa.func.min(sa.case((waiting, b.c.retry_after))),
    ).where(
        b.c.job_identifier == job,
        unfinished(b),
        b.c.generation == current_generation(tables, job),
    )


async def _backlog_source(
    store: Storage,
    stored: StoredJob,
    job: Job | str,
    filter: Filter,
    weight_column: str | None,
    trust_stored_filter: bool,
) -> Source | str:
    """The source to count the backlog on, or why there is none."""
    row = stored.row
    if row.source_kind == "job":
        return job_source(store.engine, store.tables, row.source)
    if isinstance(job, Job) and filter is None and weight_column is None:
        source = await store.counting_source(job)
        _check_binding(row, source)
        return source
    given_filter = filter is not None or trust_stored_filter
    if not given_filter and stored.filter_kind != "expression" and stored.job is not None:
        if weight_column is None or weight_column == stored.job.weight_column:
            return await store.counting_source(stored.job)  # the stored definition, exactly
    if not given_filter and stored.filter_kind == "expression":
        return (
            "the job's filter is a SQL expression, stored as text only: pass the Job (or "
            "filter=...), or trust the stored text (trust_stored_filter=True, "
            "--trust-stored-filter) to count the backlog"
        )
    if weight_column is None:
        weight_column = stored.job.weight_column if stored.job is not None else "weight"
    return await table_source(
        store, row, filter, trust_stored_filter=trust_stored_filter, weight_column=weight_column
    )


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)


async def _horizon(store: Storage, row: Any) -> HorizonReport | None:
    """The horizon of the job's table (about the table, not the filter); None where the
    table's id sequence does not allow one."""
    try:
        async with backend_errors("reading the horizon", store.meta_engine):
            source = await reflect_table_source(
                store.meta_engine,
                row.source,
                id_column=row.id_column,
                weight_column=None,
                item_columns=None,
                filter=None,
                horizon=True,
            )
            assert source.horizon is not None  # PostgreSQL
            return await report(source.horizon)
    except HorizonUnavailableError:
        return None


async def _frontier(store: Storage, upstream: str) -> int | None:
    """The upstream's oldest unfinished batch of its current generation (partial index)."""
    query = sa.select(frontier(store.tables, upstream))
    async with store.reading(f"reading the frontier of job {upstream!r}") as conn:
        value = await conn.scalar(query)
    return None if value is None else int(value)


async def list_jobs(store: Storage) -> list[JobSummary]:
    """Every job, with its unfinished batches counted through the partial index."""
    backend = store.backend
    b, jobs = backend.tables.batches, backend.tables.jobs
    exhausted = sa.case(
        (sa.and_(b.c.status == "failed", b.c.attempt >= b.c.max_attempts), 1), else_=0
    )
    open_counts = (
        sa.select(
            b.c.job_identifier,
            sa.func.sum(sa.case((b.c.status == "running", 1), else_=0)).label("running"),
            sa.func.sum(sa.case((b.c.status == "failed", 1), else_=0)).label("failed"),
            sa.func.sum(exhausted).label("out_of_attempts"),
            sa.func.sum(sa.case((b.c.status == "released", 1), else_=0)).label("released"),
        )
        .select_from(b.join(jobs, b.c.job_identifier == jobs.c.job_identifier))
        .where(unfinished(b), b.c.generation == jobs.c.generation)
        .group_by(b.c.job_identifier)
    )
    async with store.reading("listing the jobs") as conn:
        job_rows = (await conn.execute(sa.select(jobs).order_by(jobs.c.job_identifier))).all()
        counts = {r.job_identifier: r for r in (await conn.execute(open_counts)).all()}
    summaries = []
    for row in job_rows:
        c = counts.get(row.job_identifier)
        running, failed, out, released = (
            (int(c.running), int(c.failed), int(c.out_of_attempts), int(c.released))
            if c
            else (0, 0, 0, 0)
        )
        parts = [f"cursor {row.cursor if row.cursor is not None else '-'}"]
        if row.paused_at is not None:
            parts.append("paused")
        if running:
            parts.append(f"{running} running")
        if failed:
            parts.append(f"{failed} failed" + (f" ({out} out of attempts)" if out else ""))
        if released:
            parts.append(f"{released} released")
        if not running and not failed and not released and row.paused_at is None:
            parts.append("idle")
        summaries.append(
            JobSummary(
                job_identifier=row.job_identifier,
                source_kind=row.source_kind,
                source=row.source,
                cursor=row.cursor,
                generation=row.generation,
                running=running,
                failed=failed,
                out_of_attempts=out,
                updated_at=row.updated_at,
                summary=", ".join(parts),
            )
        )
    return summaries
