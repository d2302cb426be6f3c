"""Coverage: a job's id window as range-compressed segments, one state per id.

Ranges are disjoint within a job's generation, so one ordered scan of the job's batches
in the window (the ``(job_identifier, range_start)`` index) gives every segment: the
cost follows the number of batches in the window, never the number of items. Ids that
no batch of the generation covers are ``not_taken``: after the cursor, or a gap below
it (no matching item when the range after it was planned, or ids a window skipped).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ._engines import backend_errors
from ._reports import Coverage, CoverageDiff, CoverageSegment, DiffSegment
from ._source import narrowed
from ._storage import Storage
from .exceptions import BackendError, InvalidArgumentError, UnknownTableError
from .job import Job

__all__ = [
    "STATES",
    "coverage_diff",
    "coverage_window",
    "generation_of",
    "job_coverage",
    "state_of",
]

STATES = ("succeeded", "running", "retry_wait", "out_of_attempts", "released", "not_taken")


def state_of(row: Any) -> str:
    if row.status == "failed":
        return "retry_wait" if row.attempt < row.max_attempts else "out_of_attempts"
    return str(row.status)


def _check_id(value: Any, what: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidArgumentError(f"{what} must be an integer id or None, got {value!r}")
    return value


async def job_coverage(
    store: Storage,
    job: Job | str,
    *,
    id_start: int | None = None,
    id_end: int | None = None,
    generation: int | None = None,
    time_column: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Coverage:
    """The coverage of ``job`` (see :class:`Coverage`)."""
    definition, row, _ = await store.job_of(job)
    gen = generation_of(row, generation)
    if _timed(definition, since, until):
        # the time window's ids, within the id window given (or the job's)
        ids = await _time_window_ids(store, definition, time_column, since, until)
        lo_given = _check_id(id_start, "id_start")
        hi_given = _check_id(id_end, "id_end")
        lo_given = definition.id_start if lo_given is None else lo_given
        hi_given = definition.id_end if hi_given is None else hi_given
        if ids is not None:
            id_start = ids[0] if lo_given is None else max(lo_given, ids[0])
            id_end = ids[1] if hi_given is None else min(hi_given, ids[1])
        if ids is None or id_start > id_end:  # type: ignore[operator]
            cursor = None if row is None else row.cursor
            return Coverage(definition.job_identifier, gen, cursor, None, None, ())
    lo, hi = await coverage_window(store, definition, row, gen, id_start, id_end)
    return await _coverage(store, definition, row, gen, lo, hi)


def _timed(job: Job, since: datetime | None, until: datetime | None) -> bool:
    """Whether a time window applies: the call's, or the job's own."""
    windows = ((since, until), (job.since, job.until))
    return job.source_table is not None and any(w != (None, None) for w in windows)


async def _time_window_ids(
    store: Storage,
    job: Job,
    time_column: str | None,
    since: datetime | None,
    until: datetime | None,
) -> tuple[int, int] | None:
    """The lowest and highest id of the rows in the job's time window and the call's
    (None: no row)."""
    source = narrowed(
        await store.counting_source(job), time_column or job.time_column, since, until
    )
    async with backend_errors("reading the ids of the time window", source.engine):
        return await source.time_window_ids()


async def coverage_diff(
    store: Storage,
    a: Job | str,
    b: Job | str,
    *,
    id_start: int | None = None,
    id_end: int | None = None,
) -> CoverageDiff:
    """Where ``a`` succeeded and ``b`` has not, and the reverse, on the current
    generations; the window defaults to the union of both jobs' windows."""
    job_a, row_a, _ = await store.job_of(a)
    job_b, row_b, _ = await store.job_of(b)
    if _source_of(job_a, row_a) != _source_of(job_b, row_b):
        raise InvalidArgumentError(
            f"jobs {job_a.job_identifier!r} and {job_b.job_identifier!r} read different "
            f"sources ({' '.join(_source_of(job_a, row_a))} and "
            f"{' '.join(_source_of(job_b, row_b))}): their ids cannot be compared"
        )
    gen_a, gen_b = generation_of(row_a, None), generation_of(row_b, None)
    lo_a, hi_a = await coverage_window(store, job_a, row_a, gen_a, id_start, id_end)
    lo_b, hi_b = await coverage_window(store, job_b, row_b, gen_b, id_start, id_end)
    lo = min((v for v in (lo_a, lo_b) if v is not None), default=None)
    hi = max((v for v in (hi_a, hi_b) if v is not None), default=None)
    cov_a = await _coverage(store, job_a, row_a, gen_a, lo, hi)
    cov_b = await _coverage(store, job_b, row_b, gen_b, lo, hi)
    only_a, only_b = _compare(cov_a.segments, cov_b.segments)
    return CoverageDiff(
        a=job_a.job_identifier,
        b=job_b.job_identifier,
        id_start=lo,
        id_end=hi,
        only_a=tuple(only_a),
        only_b=tuple(only_b),
    )


def _source_of(job: Job, row: Any | None) -> tuple[str, str]:
    if row is not None:
        return str(row.source_kind), str(row.source)
    if job.source_job is not None:
        return "job", job.source_job
    return "table", str(job.source_table)


def generation_of(row: Any | None, generation: int | None) -> int:
    if generation is not None:
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
            raise InvalidArgumentError(
                f"generation must be an integer >= 0 or None, got {generation!r}"
            )
        return generation
    return 0 if row is None else int(row.generation)


async def coverage_window(
    store: Storage,
    job: Job,
    row: Any | None,
    generation: int,
    id_start: int | None,
    id_end: int | None,
) -> tuple[int | None, int | None]:
    """The window: given, else the job's stored one, else the ids of its source and
    batches (a few index lookups)."""
    lo = _check_id(id_start, "id_start")
    hi = _check_id(id_end, "id_end")
    lo = job.id_start if lo is None else lo
    hi = job.id_end if hi is None else hi
    if lo is not None and hi is not None and lo > hi:
        raise InvalidArgumentError(f"id_start ({lo}) is greater than id_end ({hi})")
    if lo is None or hi is None:
        low, high = await _extent(store, job, row, generation)
        lo = low if lo is None else lo
        hi = high if hi is None else hi
    return lo, hi


async def _extent(
    store: Storage, job: Job, row: Any | None, generation: int
) -> tuple[int | None, int | None]:
    """The lowest and highest id of the job's source and of its batches in the generation.

    The source's ids without its filter: a step at each end of the id index, never a
    scan. A source that cannot be read leaves the job's own first and last batch."""
    lows: list[int] = []
    highs: list[int] = []
    b = store.tables.batches
    try:
        if job.source_job is not None:
            ids = sa.select(sa.func.min(b.c.id), sa.func.max(b.c.id)).where(
                b.c.job_identifier == job.source_job
            )
            async with store.reading(f"reading the ids of job {job.source_job!r}") as conn:
                low, high = (await conn.execute(ids)).one()
        else:
            source = await store.counting_source(job)
            ids = sa.select(sa.func.min(source.id_col), sa.func.max(source.id_col)).select_from(
                source.table
            )
            async with store.reading("reading the source's ids", source.engine) as conn:
                low, high = (await conn.execute(ids)).one()
        lows += [] if low is None else [int(low)]
        highs += [] if high is None else [int(high)]
    except (BackendError, UnknownTableError):
        pass  # the source is unreachable or gone: the job's batches still bound its ids
    if row is not None:
        mine = sa.select(b.c.range_start, b.c.range_end).where(
            b.c.job_identifier == job.job_identifier, b.c.generation == generation
        )
        async with store.reading(f"reading the batches of job {job.job_identifier!r}") as conn:
            first = (await conn.execute(mine.order_by(b.c.range_start).limit(1))).first()
            last = (await conn.execute(mine.order_by(b.c.range_start.desc()).limit(1))).first()
        if first is not None and last is not None:
            lows.append(int(first.range_start))
            highs.append(int(last.range_end))
    return min(lows, default=None), max(highs, default=None)


async def _coverage(
    store: Storage, job: Job, row: Any | None, generation: int, lo: int | None, hi: int | None
) -> Coverage:
    name = job.job_identifier
    cursor = None if row is None else row.cursor
    if lo is None or hi is None or lo > hi:
        # No id at all, or a window that starts past the source's highest id
        return Coverage(name, generation, cursor, lo, hi, ())
    rows: Sequence[Any] = []
    if row is not None:
        b = store.tables.batches
        batch = sa.select(
            b.c.range_start,
            b.c.range_end,
            b.c.status,
            b.c.attempt,
            b.c.max_attempts,
            b.c.item_count,
            b.c.weight,
        ).where(b.c.job_identifier == name, b.c.generation == generation)
        # The window's batches by range_start, plus at most one starting before the
        # window and reaching into it (ranges are disjoint within a generation). Both
        # walk the (job_identifier, range_start) index; other generations' batches in
        # the way are skipped, never the items.
        inside = batch.where(b.c.range_start >= lo, b.c.range_start <= hi).order_by(b.c.range_start)
        before = (
            batch.where(b.c.range_start < lo, b.c.range_end >= lo)
            .order_by(b.c.range_start.desc())
            .limit(1)
        )
        async with store.reading(f"reading the coverage of job {name!r}") as conn:
            rows = [*(await conn.execute(before)).all(), *(await conn.execute(inside)).all()]
    return Coverage(name, generation, cursor, lo, hi, tuple(_segments(rows, lo, hi)))


def _segments(rows: Sequence[Any], lo: int, hi: int) -> list[CoverageSegment]:
    """The window [lo, hi] as segments: the batches clipped to it, gaps ``not_taken``."""
    out: list[CoverageSegment] = []

    def add(state: str, start: int, end: int, batches: int, items: int, weight: float) -> None:
        last = out[-1] if out else None
        if last is not None and last.state == state and last.range_end + 1 == start:
            out[-1] = CoverageSegment(
                state,
                last.range_start,
                end,
                last.batches + batches,
                last.items + items,
                last.weight + weight,
            )
        else:
            out.append(CoverageSegment(state, start, end, batches, items, weight))

    pos = lo
    for r in rows:
        start, end = max(int(r.range_start), pos), min(int(r.range_end), hi)
        if start > end:
            continue  # out of the window (or overlapping: never within one generation)
        if start > pos:
            add("not_taken", pos, start - 1, 0, 0, 0.0)
        add(state_of(r), start, end, 1, int(r.item_count), float(r.weight))
        pos = end + 1
    if pos <= hi:
        add("not_taken", pos, hi, 0, 0, 0.0)
    return out


def _compare(
    a: Sequence[CoverageSegment], b: Sequence[CoverageSegment]
) -> tuple[list[DiffSegment], list[DiffSegment]]:
    """Sweep two coverages of one window: where one succeeded and the other has not."""
    only_a: list[DiffSegment] = []
    only_b: list[DiffSegment] = []

    def add(out: list[DiffSegment], start: int, end: int, other: str) -> None:
        if out and out[-1].other_state == other and out[-1].range_end + 1 == start:
            out[-1] = DiffSegment(out[-1].range_start, end, other)
        else:
            out.append(DiffSegment(start, end, other))

    i = j = 0
    while i < len(a) and j < len(b):
        sa_, sb = a[i], b[j]
        start = max(sa_.range_start, sb.range_start)
        end = min(sa_.range_end, sb.range_end)
        if sa_.state == "succeeded" and sb.state != "succeeded":
            add(only_a, start, end, sb.state)
        elif sb.state == "succeeded" and sa_.state != "succeeded":
            add(only_b, start, end, sa_.state)
        if sa_.range_end == end:
            i += 1
        if sb.range_end == end:
            j += 1
    return only_a, only_b
