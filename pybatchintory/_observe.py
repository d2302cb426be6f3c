"""Administration and observability: status, backlog, job list, trace, reset.

Everything here reads the backend tables with index lookups or aggregates over one
job's rows; only :func:`reset_job` writes, under the same job lock as an acquisition.

Filters are not stored as objects: a job row keeps ``filter_text``, the SQL that
SQLAlchemy rendered with literal binds at the job's first acquisition, to refuse a
second source. Running that text again would execute SQL read from the inventory
database on the metadata database, so it is done only when the caller opts in
(``trust_stored_filter=True``). Otherwise the caller passes the job's filter again,
and it is checked against the stored text before use.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ._engines import backend_errors, db_now, read_connection, retry_transient, write_transaction
from ._source import Filter, Source, job_source, reflect_table_source
from ._tables import unfinished
from .exceptions import BatchStateError, InvalidArgumentError, JobSourceMismatchError

if TYPE_CHECKING:
    from .inventory import Inventory

__all__ = [
    "AttemptLog",
    "Backlog",
    "JobStatus",
    "JobSummary",
    "ProgressBar",
    "ResetResult",
    "TraceEntry",
    "backlog_of",
    "batch_ranges",
    "job_status",
    "list_jobs",
    "reset_job",
    "source_rows",
    "trace_item",
]

logger = logging.getLogger("pybatchintory")

_MAX_DEPTH = 16  # recursion chains longer than this are surely a cycle
_PARAMS_DIGEST = " -- params sha256:"  # filter_text's form for a filter with unrenderable binds


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


class _AsDict:
    def as_dict(self) -> dict[str, Any]:
        """The fields as JSON-able values (timestamps in ISO 8601)."""
        return _plain(self)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Backlog(_AsDict):
    """What a job still has ahead of its cursor: matching items and their total weight
    (None when the source has no weight column)."""

    items: int
    weight: float | None


@dataclass(frozen=True)
class JobStatus(_AsDict):
    """A job's state: its source, cursor, batches by status and its backlog.

    Batch counts cover the current generation (since the last reset); ``superseded``
    counts the batches of earlier generations, kept as history. ``backlog`` is None
    when it cannot be computed safely; ``backlog_note`` then says why.
    """

    job_identifier: str
    source_kind: str
    source: str
    filter_text: str
    cursor: int | None
    generation: int
    created_at: datetime
    updated_at: datetime
    running: int
    running_weight: float
    succeeded: int
    succeeded_weight: float
    failed: int
    failed_weight: float
    retryable: int
    out_of_attempts: int
    superseded: int
    expired_leases: int
    oldest_running_start: datetime | None
    earliest_lease_expiry: datetime | None
    last_success_at: datetime | None
    frontier_batch_id: int | None
    backlog: Backlog | None
    backlog_note: str | None


@dataclass(frozen=True)
class JobSummary(_AsDict):
    """One line per job: its source, cursor and unfinished batches."""

    job_identifier: str
    source_kind: str
    source: str
    cursor: int | None
    generation: int
    running: int
    failed: int
    out_of_attempts: int
    updated_at: datetime
    summary: str


@dataclass(frozen=True)
class AttemptLog(_AsDict):
    """One attempt of a batch, from the log table."""

    attempt: int
    status: str
    processing_start: datetime
    processing_end: datetime | None
    worker: str | None
    logging: str | None


@dataclass(frozen=True)
class TraceEntry(_AsDict):
    """A batch that covered the traced item.

    ``depth`` 0 is a job reading the metadata table; depth 1 a job consuming that job's
    batches (``via_batch_id`` is the upstream batch that carried the item), and so on.
    """

    job_identifier: str
    batch_id: int
    generation: int
    depth: int
    via_batch_id: int | None
    range_start: int
    range_end: int
    status: str
    attempt: int
    max_attempts: int
    processing_start: datetime
    processing_end: datetime | None
    worker: str | None
    result: Any
    attempts: tuple[AttemptLog, ...]


@dataclass(frozen=True)
class ResetResult(_AsDict):
    """What a reset did: the cursor's move, the new generation, and which unfinished
    batches were carried into it (wholly at or below ``to_id``: still to be finished)
    or superseded (their ids are processed again; a worker still on one loses it)."""

    job_identifier: str
    old_cursor: int | None
    new_cursor: int | None
    generation: int
    carried: tuple[int, ...]
    superseded: tuple[int, ...]


# -- helpers -------------------------------------------------------------------------


async def _job_row(conn: AsyncConnection, inventory: Inventory, job: str, *, lock: bool = False) -> Any:
    jobs = inventory.backend.tables.jobs
    query = sa.select(jobs).where(jobs.c.job_identifier == job)
    if lock:
        query = query.with_for_update()  # rendered as nothing on SQLite: BEGIN IMMEDIATE locks
    row = (await conn.execute(query)).first()
    if row is None:
        raise InvalidArgumentError(
            f"no job {job!r} in the inventory; 'pybatchintory jobs' lists the known jobs"
        )
    return row


async def _table_source(
    inventory: Inventory,
    job_row: Any,
    filter: Filter,
    *,
    trust_stored_filter: bool,
    weight_column: str | None,
    item_columns: Iterable[str] | None = None,
) -> Source:
    """The job's metadata table with the job's filter, checked against the stored text."""
    stored = job_row.filter_text
    use_stored = trust_stored_filter and filter is None and stored
    if use_stored and _PARAMS_DIGEST in stored:
        raise InvalidArgumentError(
            f"job {job_row.job_identifier!r}'s filter was stored as a digest, not as runnable "
            "SQL; pass the job's filter with filter=..."
        )
    async with backend_errors("reflecting the source table", inventory.meta_engine):
        source = await reflect_table_source(
            inventory.meta_engine,
            job_row.source,
            id_column=job_row.id_column,
            weight_column=None,
            item_columns=item_columns,
            filter=sa.text(stored) if use_stored else filter,
        )
    if not use_stored and source.binding.filter_text != stored:
        given = source.binding.filter_text or "no filter"
        raise JobSourceMismatchError(
            f"job {job_row.job_identifier!r} was bound to filter "
            f"{stored or 'none'}, not {given}; pass the job's own filter "
            "(or trust_stored_filter=True / --trust-stored-filter to run the stored SQL)"
        )
    if weight_column is not None and weight_column in source.table.c:
        source.weight_col = source.table.c[weight_column]
    return source


async def _count_ahead(
    source: Source, cursor: int | None, id_start: int | None, id_end: int | None
) -> Backlog:
    start = max(v for v in (id_start, None if cursor is None else cursor + 1, -(2**63)) if v is not None)
    weight = sa.func.sum(source.weight_col) if source.weight_col is not None else sa.null()
    query = (
        sa.select(sa.func.count(), weight)
        .select_from(source.table)
        .where(source.where, source.id_col >= start)
    )
    if id_end is not None:
        query = query.where(source.id_col <= id_end)
    async with read_connection(source.engine) as conn:
        items, total = (await conn.execute(query)).one()
    has_weight = source.weight_col is not None
    return Backlog(int(items), float(total or 0) if has_weight else None)


async def backlog_of(
    inventory: Inventory, source: Source, job: str, id_start: int | None, id_end: int | None
) -> Backlog:
    """The backlog of ``job`` over ``source``: matching items after its cursor, in the window."""
    jobs = inventory.backend.tables.jobs
    async with backend_errors(f"reading job {job!r}", inventory.inventory_engine):
        async with read_connection(inventory.inventory_engine) as conn:
            cursor = await conn.scalar(sa.select(jobs.c.cursor).where(jobs.c.job_identifier == job))
    async with backend_errors(f"counting the backlog of job {job!r}", source.engine):
        return await _count_ahead(source, cursor, id_start, id_end)


async def batch_ranges(inventory: Inventory, ids: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """``(id, range_start, range_end, attempt)`` of the given batches, for log lines."""
    if not ids:
        return []
    b = inventory.backend.tables.batches
    query = sa.select(b.c.id, b.c.range_start, b.c.range_end, b.c.attempt).where(b.c.id.in_(list(ids)))
    async with backend_errors("reading batches", inventory.inventory_engine):
        async with read_connection(inventory.inventory_engine) as conn:
            rows = (await conn.execute(query.order_by(b.c.id))).all()
    return [(int(r.id), int(r.range_start), int(r.range_end), int(r.attempt)) for r in rows]


# -- status and the job list -----------------------------------------------------------


async def job_status(
    inventory: Inventory,
    job: str,
    *,
    filter: Filter = None,
    id_start: int | None = None,
    id_end: int | None = None,
    weight_column: str | None = "weight",
    trust_stored_filter: bool = False,
) -> JobStatus:
    """The status of ``job`` (see :class:`JobStatus`)."""
    backend = inventory.backend
    b = backend.tables.batches
    async with backend_errors(f"reading the status of job {job!r}", backend.engine):
        async with read_connection(backend.engine) as conn:
            row = await _job_row(conn, inventory, job)
            current = b.c.generation == row.generation
            now = db_now(backend.dialect)

            def count(*conds: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
                return sa.func.sum(sa.case((sa.and_(current, *conds), 1), else_=0))

            def weight(*conds: sa.ColumnElement[bool]) -> sa.ColumnElement[float]:
                return sa.func.sum(sa.case((sa.and_(current, *conds), b.c.weight), else_=0))

            running = b.c.status == "running"
            ok = b.c.status == "succeeded"
            failed = b.c.status == "failed"
            # One pass over the job's rows (the job_range index), whatever their number.
            agg = (
                await conn.execute(
                    sa.select(
                        count(running), weight(running),
                        count(ok), weight(ok),
                        count(failed), weight(failed),
                        count(failed, b.c.attempt < b.c.max_attempts),
                        count(failed, b.c.attempt >= b.c.max_attempts),
                        sa.func.sum(sa.case((current, 0), else_=1)),
                        count(running, b.c.lease_expires_at < now),
                        sa.func.min(sa.case((sa.and_(current, running), b.c.processing_start))),
                        sa.func.min(sa.case((sa.and_(current, running), b.c.lease_expires_at))),
                        sa.func.max(sa.case((ok, b.c.processing_end))),
                    ).where(b.c.job_identifier == job)
                )
            ).one()
    counts = [int(v or 0) for v in (agg[0], agg[2], agg[4], *agg[6:10])]
    weights = [float(v or 0) for v in (agg[1], agg[3], agg[5])]
    oldest, earliest, last_ok = agg[10:]

    backlog: Backlog | None = None
    note: str | None = None
    frontier: int | None = None
    if row.source_kind == "job":
        source = job_source(backend.engine, backend.tables, row.source)
        frontier = await _frontier(inventory, row.source)
        backlog = await backlog_of(inventory, source, job, id_start, id_end)
    elif row.filter_text and filter is None and not trust_stored_filter:
        note = "the job has a filter: pass it (filter=...) or trust the stored one to count the backlog"
    else:
        source = await _table_source(
            inventory, row, filter, trust_stored_filter=trust_stored_filter, weight_column=weight_column
        )
        backlog = await backlog_of(inventory, source, job, id_start, id_end)
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
    )


async def _frontier(inventory: Inventory, upstream: str) -> int | None:
    """The upstream's oldest unfinished batch of its current generation (partial index)."""
    b, jobs = inventory.backend.tables.batches, inventory.backend.tables.jobs
    generation = sa.select(jobs.c.generation).where(jobs.c.job_identifier == upstream).scalar_subquery()
    query = sa.select(sa.func.min(b.c.id)).where(
        b.c.job_identifier == upstream, unfinished(b), b.c.generation == generation
    )
    async with backend_errors(f"reading the frontier of job {upstream!r}", inventory.inventory_engine):
        async with read_connection(inventory.inventory_engine) as conn:
            value = await conn.scalar(query)
    return None if value is None else int(value)


async def list_jobs(inventory: Inventory) -> list[JobSummary]:
    """Every job, with its unfinished batches counted through the partial index."""
    backend = inventory.backend
    b, jobs = backend.tables.batches, backend.tables.jobs
    exhausted = sa.case((sa.and_(b.c.status == "failed", b.c.attempt >= b.c.max_attempts), 1), else_=0)
    open_counts = (
        sa.select(
            b.c.job_identifier,
            sa.func.sum(sa.case((b.c.status == "running", 1), else_=0)).label("running"),
            sa.func.sum(sa.case((b.c.status == "failed", 1), else_=0)).label("failed"),
            sa.func.sum(exhausted).label("out_of_attempts"),
        )
        .select_from(b.join(jobs, b.c.job_identifier == jobs.c.job_identifier))
        .where(unfinished(b), b.c.generation == jobs.c.generation)
        .group_by(b.c.job_identifier)
    )
    async with backend_errors("listing the jobs", backend.engine):
        async with read_connection(backend.engine) as conn:
            job_rows = (await conn.execute(sa.select(jobs).order_by(jobs.c.job_identifier))).all()
            counts = {r.job_identifier: r for r in (await conn.execute(open_counts)).all()}
    summaries = []
    for row in job_rows:
        c = counts.get(row.job_identifier)
        running, failed, out = (int(c.running), int(c.failed), int(c.out_of_attempts)) if c else (0, 0, 0)
        parts = [f"cursor {row.cursor if row.cursor is not None else '-'}"]
        if running:
            parts.append(f"{running} running")
        if failed:
            parts.append(f"{failed} failed" + (f" ({out} out of attempts)" if out else ""))
        if not running and not failed:
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


# -- trace ---------------------------------------------------------------------------------


def _same_table(stored: str, given: str) -> bool:
    return stored == given or ("." not in given and stored.rpartition(".")[2] == given)


async def trace_item(inventory: Inventory, source_table: str, item_id: int) -> list[TraceEntry]:
    """Every batch, of every job and generation, that covered ``item_id`` of ``source_table``,
    then the batches of downstream jobs that consumed those batches.

    Per job and generation: the batch with the greatest ``range_start <= item_id`` (one
    backward step on the ``(job_identifier, range_start)`` index), kept if its range
    reaches the item. Ranges are disjoint within a generation, so that batch is the only
    candidate.
    """
    if isinstance(item_id, bool) or not isinstance(item_id, int):
        raise InvalidArgumentError(f"item_id must be an integer id, got {item_id!r}")
    backend = inventory.backend
    jobs = backend.tables.jobs
    async with backend_errors(f"tracing item {item_id} of {source_table!r}", backend.engine):
        async with read_connection(backend.engine) as conn:
            job_rows = (await conn.execute(sa.select(jobs.c.job_identifier, jobs.c.source_kind, jobs.c.source, jobs.c.generation))).all()
            by_upstream: dict[str, list[Any]] = {}
            for row in job_rows:
                if row.source_kind == "job":
                    by_upstream.setdefault(row.source, []).append(row)
            direct = [r for r in job_rows if r.source_kind == "table" and _same_table(r.source, source_table)]
            entries: list[TraceEntry] = []
            pending: list[tuple[Any, int, int | None]] = [(r, item_id, None) for r in direct]
            depth = 0
            while pending and depth < _MAX_DEPTH:
                found: list[tuple[Any, int, int | None]] = []
                for job_row, covered_id, via in pending:
                    for entry in await _covering(conn, inventory, job_row, covered_id, via, depth):
                        entries.append(entry)
                        # Only a success hands the batch to downstream jobs.
                        if entry.status == "succeeded":
                            found.extend(
                                (down, entry.batch_id, entry.batch_id)
                                for down in by_upstream.get(job_row.job_identifier, [])
                            )
                pending, depth = found, depth + 1
    return entries


async def _covering(
    conn: AsyncConnection, inventory: Inventory, job_row: Any, item_id: int, via: int | None, depth: int
) -> list[TraceEntry]:
    tables = inventory.backend.tables
    b, logs = tables.batches, tables.logs
    entries = []
    for generation in range(job_row.generation, -1, -1):
        batch = (
            await conn.execute(
                sa.select(b)
                .where(
                    b.c.job_identifier == job_row.job_identifier,
                    b.c.generation == generation,
                    b.c.range_start <= item_id,
                )
                .order_by(b.c.range_start.desc())
                .limit(1)
            )
        ).first()
        if batch is None or batch.range_end < item_id:
            continue
        attempts = (
            await conn.execute(sa.select(logs).where(logs.c.id == batch.id).order_by(logs.c.attempt))
        ).all()
        entries.append(
            TraceEntry(
                job_identifier=batch.job_identifier,
                batch_id=batch.id,
                generation=batch.generation,
                depth=depth,
                via_batch_id=via,
                range_start=batch.range_start,
                range_end=batch.range_end,
                status=batch.status,
                attempt=batch.attempt,
                max_attempts=batch.max_attempts,
                processing_start=batch.processing_start,
                processing_end=batch.processing_end,
                worker=batch.worker,
                result=batch.result,
                attempts=tuple(
                    AttemptLog(a.attempt, a.status, a.processing_start, a.processing_end, a.worker, a.logging)
                    for a in attempts
                ),
            )
        )
    return entries


# -- reset -----------------------------------------------------------------------------


async def reset_job(
    inventory: Inventory, job: str, to_id: int | None, *, force: bool = False
) -> ResetResult:
    """Rewind ``job`` so that ids after ``to_id`` (all, if None) are processed again.

    The job moves to a new generation with its cursor at ``to_id``; history stays. The
    job's unfinished batches (current generation) are dealt with so that nothing is
    lost and the downstream frontier stays right:

    - wholly at or below ``to_id``: carried into the new generation, still retried and
      still holding back downstream jobs;
    - after ``to_id``: superseded (marked failed in the old generation; their ids come
      again); a running one is taken from its worker only with ``force``;
    - straddling ``to_id``: refused; reset to just before or at the end of that batch.
    """
    if to_id is not None and (isinstance(to_id, bool) or not isinstance(to_id, int)):
        raise InvalidArgumentError(f"to_id must be an integer id or None, got {to_id!r}")
    backend = inventory.backend
    b, jobs, logs = backend.tables.batches, backend.tables.jobs, backend.tables.logs

    touched: list[tuple[str, Any]] = []

    async def rewind() -> ResetResult:
        touched.clear()
        async with write_transaction(backend.engine) as conn:
            row = await _job_row(conn, inventory, job, lock=True)
            if to_id is not None and (row.cursor is None or to_id > row.cursor):
                raise InvalidArgumentError(
                    f"to_id {to_id} is beyond the cursor of job {job!r} ({row.cursor}): a reset "
                    "only rewinds; use id_start to skip ids instead"
                )
            open_batches = (
                await conn.execute(
                    sa.select(b.c.id, b.c.range_start, b.c.range_end, b.c.status, b.c.attempt)
                    .where(b.c.job_identifier == job, unfinished(b), b.c.generation == row.generation)
                    .order_by(b.c.id)
                )
            ).all()
            carried = [r for r in open_batches if to_id is not None and r.range_end <= to_id]
            straddling = [r for r in open_batches if to_id is not None and r.range_start <= to_id < r.range_end]
            superseded = [r for r in open_batches if r not in carried and r not in straddling]
            if straddling:
                s = straddling[0]
                raise InvalidArgumentError(
                    f"to_id {to_id} falls inside unfinished batch {s.id} (ids {s.range_start}.."
                    f"{s.range_end}) of job {job!r}; reset to {s.range_start - 1} or {s.range_end}"
                )
            running = [r.id for r in superseded if r.status == "running"]
            if running and not force:
                shown = ", ".join(str(i) for i in running[:5]) + (", ..." if len(running) > 5 else "")
                raise BatchStateError(
                    f"job {job!r} has {len(running)} running batch(es) ({shown}) after the reset "
                    "point; wait for them, or force the reset (their workers then lose them)"
                )
            generation = row.generation + 1
            now = db_now(backend.dialect)
            if carried:
                await conn.execute(
                    sa.update(b).where(b.c.id.in_([r.id for r in carried])).values(generation=generation)
                )
            for r in superseded:
                if r.status == "running":
                    await conn.execute(
                        sa.update(logs)
                        .where(logs.c.id == r.id, logs.c.attempt == r.attempt, logs.c.status == "running")
                        .values(status="failed", processing_end=now, logging=f"superseded by a reset of the job to generation {generation}")
                    )
            if superseded:
                await conn.execute(
                    sa.update(b)
                    .where(b.c.id.in_([r.id for r in superseded]), b.c.status == "running")
                    .values(status="failed", processing_end=now, lease_expires_at=None)
                )
            await conn.execute(
                sa.update(jobs)
                .where(jobs.c.job_identifier == job)
                .values(generation=generation, cursor=to_id, updated_at=now)
            )
            touched.extend([("carried into the new generation", r) for r in carried])
            touched.extend([("superseded by the reset", r) for r in superseded])
        return ResetResult(
            job_identifier=job,
            old_cursor=row.cursor,
            new_cursor=to_id,
            generation=generation,
            carried=tuple(r.id for r in carried),
            superseded=tuple(r.id for r in superseded),
        )

    async with backend_errors(f"resetting job {job!r}", backend.engine):
        result = await retry_transient(rewind)
    logger.warning(
        "job reset: cursor %s -> %s, generation %s",
        result.old_cursor,
        result.new_cursor,
        result.generation,
        extra={
            "job": job,
            "generation": result.generation,
            "old_cursor": result.old_cursor,
            "new_cursor": result.new_cursor,
            "carried": list(result.carried),
            "superseded": list(result.superseded),
        },
    )
    for what, r in touched:
        logger.info(
            "batch %s (was %s)",
            what,
            r.status,
            extra={
                "job": job,
                "batch_id": r.id,
                "range_start": r.range_start,
                "range_end": r.range_end,
                "attempt": r.attempt,
                "generation": result.generation,
            },
        )
    return result


# -- the metadata rows behind a downstream batch ------------------------------------------


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The union of closed integer ranges, as sorted disjoint ranges."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


async def source_rows(
    inventory: Inventory,
    job: str,
    ranges: Sequence[tuple[int, int]],
    *,
    filter: Filter,
    trust_stored_filter: bool,
    item_columns: Iterable[str] | None,
    chunk_size: int,
) -> AsyncIterator[list[dict[str, Any]]]:
    """The metadata rows behind ``ranges`` of ``job``: followed down the chain of upstream
    jobs to the metadata table, as the union of the ranges found there."""
    backend = inventory.backend
    b = backend.tables.batches
    seen: set[str] = set()
    async with backend_errors(f"following job {job!r} to its metadata table", backend.engine):
        async with read_connection(backend.engine) as conn:
            row = await _job_row(conn, inventory, job)
            while row.source_kind == "job":
                if row.job_identifier in seen or len(seen) >= _MAX_DEPTH:
                    raise InvalidArgumentError(f"job {job!r} has a cyclic chain of upstream jobs")
                seen.add(row.job_identifier)
                upstream: list[tuple[int, int]] = []
                for start, end in _merge(ranges):
                    # The downstream's items were the upstream's succeeded batches in the range.
                    found = await conn.execute(
                        sa.select(b.c.range_start, b.c.range_end).where(
                            b.c.job_identifier == row.source,
                            b.c.status == "succeeded",
                            b.c.id >= start,
                            b.c.id <= end,
                        )
                    )
                    upstream.extend((r.range_start, r.range_end) for r in found)
                ranges = upstream
                row = await _job_row(conn, inventory, row.source)
    source = await _table_source(
        inventory,
        row,
        filter,
        trust_stored_filter=trust_stored_filter,
        weight_column=None,
        item_columns=item_columns,
    )
    for start, end in _merge(ranges):
        async with backend_errors(f"reading ids {start}..{end} of {row.source!r}", source.engine):
            async for chunk in source.stream(start, end, chunk_size):
                yield chunk


# -- a progress bar for the sync face ---------------------------------------------------


class ProgressBar:
    """A one-line progress bar on stderr, sized by the backlog known before the run.

    It counts weight (items when the source has no weight); retried batches were not
    in the backlog, so the figure may pass the total, and the bar then stays full.
    """

    def __init__(self, job: str, backlog: Backlog, stream: TextIO | None = None, width: int = 30) -> None:
        self.job = job
        self.by_weight = backlog.weight is not None
        self.total = float(backlog.weight if backlog.weight is not None else backlog.items)
        self.done = 0.0
        self.batches = 0
        self.width = width
        self.stream = stream if stream is not None else sys.stderr
        self.draw()

    def advance(self, weight: float, items: int) -> None:
        """Count one more batch handed back by the caller."""
        self.done += weight if self.by_weight else items
        self.batches += 1
        self.draw()

    def draw(self) -> None:
        share = 1.0 if self.total <= 0 else min(self.done / self.total, 1.0)
        filled = int(share * self.width)
        unit = "weight" if self.by_weight else "items"
        self.stream.write(
            f"\r{self.job} [{'#' * filled}{'.' * (self.width - filled)}] {share:4.0%} "
            f"{self.done:g}/{self.total:g} {unit}, {self.batches} batches"
        )
        self.stream.flush()

    def close(self) -> None:
        """End the line."""
        self.stream.write("\n")
        self.stream.flush()
