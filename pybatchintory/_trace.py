"""Trace: every batch of every job that covered an item, and the rows behind a batch."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ._engines import backend_errors, read_connection
from ._reports import AttemptLog, TraceEntry
from ._source import check_table
from ._status import table_source
from ._storage import Storage, job_row
from .exceptions import InvalidArgumentError, PyBatchintoryError
from .job import Filter

_MAX_DEPTH = 16  # recursion chains longer than this are surely a cycle


# -- trace ---------------------------------------------------------------------------------


def _same_table(stored: str, given: str) -> bool:
    return stored == given or ("." not in given and stored.rpartition(".")[2] == given)


async def trace_item(store: Storage, source_table: str, item_id: int) -> list[TraceEntry]:
    """Every batch, of every job and generation, that covered ``item_id`` of ``source_table``,
    then the batches of downstream jobs that consumed those batches.

    Per job and generation: the batch with the greatest ``range_start <= item_id`` (one
    backward step on the ``(job_identifier, range_start)`` index), kept if its range
    reaches the item. Ranges are disjoint within a generation, so that batch is the only
    candidate.
    """
    if isinstance(item_id, bool) or not isinstance(item_id, int):
        raise InvalidArgumentError(f"item_id must be an integer id, got {item_id!r}")
    backend = store.backend
    jobs = backend.tables.jobs
    async with backend_errors(f"tracing item {item_id} of {source_table!r}", backend.engine):
        async with read_connection(backend.engine) as conn:
            job_rows = (
                await conn.execute(
                    sa.select(
                        jobs.c.job_identifier, jobs.c.source_kind, jobs.c.source, jobs.c.generation
                    )
                )
            ).all()
    by_upstream: dict[str, list[Any]] = {}
    for row in job_rows:
        if row.source_kind == "job":
            by_upstream.setdefault(row.source, []).append(row)
    direct = [
        r for r in job_rows if r.source_kind == "table" and _same_table(r.source, source_table)
    ]
    if not direct:
        await _check_table_exists(store, source_table)
    pending: list[tuple[Any, int, int | None, str | None]] = []
    for row in direct:
        verdict = await _item_in_job(store, row.job_identifier, item_id)
        if verdict is not False:
            pending.append((row, item_id, None, verdict if isinstance(verdict, str) else None))
    entries: list[TraceEntry] = []
    async with backend_errors(f"tracing item {item_id} of {source_table!r}", backend.engine):
        async with read_connection(backend.engine) as conn:
            depth = 0
            while pending and depth < _MAX_DEPTH:
                found: list[tuple[Any, int, int | None, str | None]] = []
                for job_row, covered_id, via, note in pending:
                    for entry in await _covering(conn, store, job_row, covered_id, via, depth):
                        entry = dataclasses.replace(entry, verified=note is None, note=note)
                        entries.append(entry)
                        # Only a success hands the batch to downstream jobs.
                        if entry.status == "succeeded":
                            found.extend(
                                (down, entry.batch_id, entry.batch_id, note)
                                for down in by_upstream.get(job_row.job_identifier, [])
                            )
                pending, depth = found, depth + 1
    return entries


async def _item_in_job(store: Storage, job: str, item_id: int) -> bool | str:
    """Whether the item passes the job's filter: True, False, or why it cannot be told."""
    stored = await store.stored_job(job)
    if stored.filter_kind == "expression" or stored.job is None:
        if not stored.row.filter_text:
            return True
        return "the job's filter is a SQL expression, stored as text only: not checked"
    try:
        source = await store.source(stored.job)
        return await source.contains(item_id)
    except PyBatchintoryError as exc:
        return f"the job's filter could not be checked on the metadata table: {exc}"


async def _check_table_exists(store: Storage, source_table: str) -> None:
    """No job reads the table: an unknown table is a mistake to name, not an empty answer."""
    async with backend_errors("reflecting the source table", store.meta_engine):
        await check_table(store.meta_engine, source_table)


async def _covering(
    conn: AsyncConnection,
    store: Storage,
    job_row: Any,
    item_id: int,
    via: int | None,
    depth: int,
) -> list[TraceEntry]:
    tables = store.backend.tables
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
            await conn.execute(
                sa.select(logs).where(logs.c.id == batch.id).order_by(logs.c.attempt)
            )
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
                    AttemptLog(
                        a.attempt,
                        a.status,
                        a.processing_start,
                        a.processing_end,
                        a.worker,
                        a.logging,
                    )
                    for a in attempts
                ),
            )
        )
    return entries


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
    store: Storage,
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
    backend = store.backend
    b = backend.tables.batches
    seen: set[str] = set()
    async with backend_errors(f"following job {job!r} to its metadata table", backend.engine):
        async with read_connection(backend.engine) as conn:
            row = await job_row(conn, store.tables, job)
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
                row = await job_row(conn, store.tables, row.source)
    source = await table_source(
        store,
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
