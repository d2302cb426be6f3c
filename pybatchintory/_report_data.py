"""What the HTML report shows, read with bounded results whatever a job's size
(docs/report.md): the coverage bar's columns, throughput and duration buckets, and the
newest failed batches.

The bar's states are the coverage's: each state is named by ``_coverage.state_of`` (the
function that names the segments of ``coverage``), applied to the batches or, past
``EXACT_BATCHES`` batches in the window, to groups of batches that share the columns it
reads; a state added there shows up here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa

from ._coverage import coverage_window, generation_of, job_coverage, state_of
from ._dialects import dialect_named
from ._reports import Coverage
from ._storage import Storage
from ._tables import unfinished

__all__ = [
    "BAR_PIXELS",
    "EXACT_BATCHES",
    "FAILED_SHOWN",
    "STATE_COLUMNS",
    "TIME_BUCKETS",
    "Bar",
    "Bucket",
    "Column",
    "Failure",
    "coverage_bar",
    "failures",
    "fold",
    "timeline",
]

BAR_PIXELS = 600
TIME_BUCKETS = 60
FAILED_SHOWN = 50
# Up to this many batches in the window, the bar folds the exact coverage segments;
# past it the database groups the batches by column first (a million rows are not
# worth sending to Python to draw 600 columns).
EXACT_BATCHES = 20_000
# The batch columns ``_coverage.state_of`` reads: the database groups batches by them.
STATE_COLUMNS = ("status", "attempt", "max_attempts")

# A column of many ids shows two things: the state most of its ids are in (the bar),
# and, above it, the most urgent state needing attention among them (the alert strip),
# so that one failed batch among a million succeeded ones stays visible without
# painting a 0.1 % failure rate as a red bar. Calm states raise no alert; a state added
# to the coverage later does, ranked right after the failures.
_URGENCY = ("out_of_attempts", "retry_wait", "running")
_CALM = ("succeeded", "not_taken", "beyond_horizon")


def urgency(state: str) -> int:
    if state in _URGENCY:
        rank = _URGENCY.index(state)
        return rank if rank < 2 else rank + 1
    return 2


@dataclass(frozen=True)
class Column:
    """One column of the coverage bar: ids ``start..end`` and how many are in each state."""

    start: int
    end: int
    ids: dict[str, int]

    @property
    def state(self) -> str:
        """The state of most of its ids (ties: the more urgent)."""
        if not self.ids:
            return "not_taken"
        return max(self.ids, key=lambda s: (self.ids[s], s not in _CALM, -urgency(s)))

    @property
    def alert(self) -> str | None:
        """The most urgent state among its ids that is not calm, if any."""
        hot = [s for s, n in self.ids.items() if n > 0 and s not in _CALM]
        return min(hot, key=urgency) if hot else None


@dataclass(frozen=True)
class Bucket:
    """Succeeded batches whose attempt ended in [start, start + width) seconds."""

    start: float
    batches: int
    items: int
    weight: float
    mean_seconds: float
    max_seconds: float


@dataclass(frozen=True)
class Failure:
    batch_id: int
    state: str
    range_start: int
    range_end: int
    attempt: int
    max_attempts: int
    ended: datetime | None
    error: str | None


@dataclass
class Bar:
    """The coverage bar of a job: its window, columns, and per state the ids and batches."""

    generation: int
    cursor: int | None
    id_start: int | None
    id_end: int | None
    columns: list[Column] = field(default_factory=list)
    totals: dict[str, list[int]] = field(default_factory=dict)  # state: [ids, batches]
    exact: bool = True


def fold(coverage: Coverage, pixels: int = BAR_PIXELS) -> Bar:
    """The coverage's segments folded into at most ``pixels`` columns of equal id span:
    cost in proportion to segments plus columns, never to ids."""
    bar = Bar(coverage.generation, coverage.cursor, coverage.id_start, coverage.id_end)
    for seg in coverage.segments:
        total = bar.totals.setdefault(seg.state, [0, 0])
        total[0] += seg.range_end - seg.range_start + 1
        total[1] += seg.batches
    bounds = _bounds(coverage.id_start, coverage.id_end, pixels)
    bar.columns = [Column(bounds[i], bounds[i + 1] - 1, {}) for i in range(len(bounds) - 1)]
    i = 0
    for seg in coverage.segments:
        i = _spread(bar.columns, bounds, i, seg.range_start, seg.range_end, seg.state, None)
    return bar


def _bounds(lo: int | None, hi: int | None, pixels: int) -> list[int]:
    """Column i holds the ids [bounds[i], bounds[i + 1])."""
    if lo is None or hi is None or hi < lo:
        return []
    span = hi - lo + 1
    count = min(pixels, span)
    return [lo + span * i // count for i in range(count + 1)]


def _spread(
    columns: list[Column],
    bounds: list[int],
    first: int,
    start: int,
    end: int,
    state: str,
    ids: int | None,
) -> int:
    """Add ``start..end`` to the columns it overlaps (from column ``first`` on): each
    its overlap, or, given ``ids`` (fewer ids than the span: a group of batches), those
    apportioned by overlap. Returns the column where ``start`` lies."""
    count = len(columns)
    while first < count and bounds[first + 1] <= start:
        first += 1
    span = end - start + 1
    given = ids
    j = first
    while j < count and bounds[j] <= end:
        overlap = min(end, bounds[j + 1] - 1) - max(start, bounds[j]) + 1
        if ids is None:
            share = overlap
        elif bounds[j + 1] > end:
            share = given or 0  # the last column takes what rounding left
        else:
            share = ids * overlap // span
        if given is not None:
            given -= share
        if share:
            cells = columns[j].ids
            cells[state] = cells.get(state, 0) + share
        j += 1
    return first


async def coverage_bar(
    store: Storage, name: str, pixels: int = BAR_PIXELS, exact_batches: int = EXACT_BATCHES
) -> Bar:
    """The job's coverage bar over its window (current generation)."""
    job, row, _ = await store.job_of(name)
    generation = generation_of(row, None)
    lo, hi = await coverage_window(store, job, row, generation, None, None)
    if lo is None or hi is None or lo > hi or row is None:
        return fold(await job_coverage(store, name), pixels)
    b = store.tables.batches
    mine = sa.and_(
        b.c.job_identifier == name,
        b.c.generation == generation,
        b.c.range_start <= hi,
        b.c.range_end >= lo,
    )
    async with store.reading(f"counting the batches of job {name!r}") as conn:
        # counted up to one past the threshold only: the index scan stops there
        some = sa.select(b.c.id).where(mine).limit(exact_batches + 1).subquery()
        count = int(await conn.scalar(sa.select(sa.func.count()).select_from(some)) or 0)
    if count <= exact_batches:
        return fold(await job_coverage(store, name), pixels)
    # Each batch clipped to the window, grouped by the column its first id lies in and
    # by the columns that name its state: at most (columns x states) rows come back.
    bounds = _bounds(lo, hi, pixels)
    per_id = (len(bounds) - 1) / (hi - lo + 1)
    start = sa.case((b.c.range_start < lo, lo), else_=b.c.range_start)
    clipped = (
        sa.select(
            start.label("start"),
            sa.case((b.c.range_end > hi, hi), else_=b.c.range_end).label("end"),
            dialect_named(store.backend.dialect).floor((start - lo) * per_id).label("col"),
            *(b.c[c] for c in STATE_COLUMNS),
        )
        .where(mine)
        .offset(0)  # each row's expressions once (see timeline())
        .subquery()
    )
    keys = [clipped.c.col, *(clipped.c[c] for c in STATE_COLUMNS)]
    query = (
        sa.select(
            *keys,
            sa.func.count().label("batches"),
            sa.func.sum(clipped.c.end - clipped.c.start + 1).label("ids"),
            sa.func.min(clipped.c.start).label("first"),
            sa.func.max(clipped.c.end).label("last"),
        )
        .group_by(*keys)
        .order_by(clipped.c.col)
    )
    async with store.reading(f"reading the coverage of job {name!r}") as conn:
        groups = (await conn.execute(query)).all()
    cursor = None if row is None else row.cursor
    bar = Bar(generation, cursor, lo, hi, exact=False)
    bar.columns = [Column(bounds[i], bounds[i + 1] - 1, {}) for i in range(len(bounds) - 1)]
    for g in groups:
        state, ids = state_of(g), int(g.ids)
        total = bar.totals.setdefault(state, [0, 0])
        total[0] += ids
        total[1] += int(g.batches)
        near = max(int(g.col) - 1, 0)  # a float product may land one column too high
        _spread(bar.columns, bounds, near, int(g.first), int(g.last), state, ids)
    for col in bar.columns:
        rest = col.end - col.start + 1 - sum(col.ids.values())
        if rest > 0:
            col.ids["not_taken"] = col.ids.get("not_taken", 0) + rest
    untaken = (hi - lo + 1) - sum(t[0] for t in bar.totals.values())
    if untaken > 0:
        bar.totals["not_taken"] = [untaken, 0]
    return bar


async def timeline(store: Storage, name: str, generation: int) -> tuple[float, list[Bucket]]:
    """Succeeded batches of the generation by the time their attempt ended, in at most
    ``TIME_BUCKETS`` buckets, aggregated by the database."""
    b = store.tables.batches
    dialect = dialect_named(store.backend.dialect)
    mine = sa.and_(
        b.c.job_identifier == name, b.c.generation == generation, b.c.status == "succeeded"
    )
    async with store.reading(f"reading the timeline of job {name!r}") as conn:
        # The timestamps themselves: their order is time order on both databases
        # (SQLite's ISO text too), so no conversion runs per row here.
        first, last = (
            await conn.execute(
                sa.select(sa.func.min(b.c.processing_end), sa.func.max(b.c.processing_end)).where(
                    mine
                )
            )
        ).one()
        if first is None or last is None:
            return 0.0, []
        t0 = first.timestamp()
        width = max((last.timestamp() - t0) / TIME_BUCKETS, 1.0)
        # Each timestamp converted once per row: OFFSET 0 keeps both databases from
        # merging the subquery into the aggregate (which would convert it per use).
        times = (
            sa.select(
                dialect.epoch(b.c.processing_end).label("e"),
                dialect.epoch(b.c.processing_start).label("s"),
                b.c.item_count,
                b.c.weight,
            )
            .where(mine)
            .offset(0)
            .subquery()
        )
        # The last batch lands in bucket TIME_BUCKETS; it is folded into the one before
        # below.
        bucket = dialect.floor((times.c.e - t0) / width).label("bucket")
        duration = times.c.e - times.c.s
        query = (
            sa.select(
                bucket,
                sa.func.count(),
                sa.func.sum(times.c.item_count),
                sa.func.sum(times.c.weight),
                sa.func.avg(duration),
                sa.func.max(duration),
            )
            .group_by(bucket)
            .order_by(bucket)
        )
        rows = (await conn.execute(query)).all()
    merged: dict[int, list[float]] = {}
    for index, count, items, weight, mean, longest in rows:
        key = min(int(index), TIME_BUCKETS - 1)
        old = merged.get(key)
        if old is None:
            merged[key] = [float(count), float(items), float(weight), float(mean), float(longest)]
        else:  # the last instant's bucket, folded into the one before
            total = old[0] + count
            old[3] = (old[3] * old[0] + float(mean) * count) / total
            old[0], old[1], old[2] = total, old[1] + float(items), old[2] + float(weight)
            old[4] = max(old[4], float(longest))
    return width, [
        Bucket(t0 + k * width, int(v[0]), int(v[1]), v[2], v[3], v[4])
        for k, v in sorted(merged.items())
    ]


async def failures(store: Storage, name: str, generation: int) -> tuple[list[Failure], int]:
    """The newest failed batches of the generation with their last attempt's log text."""
    b, logs = store.tables.batches, store.tables.logs
    # unfinished(): the predicate of the partial index of unfinished batches, inline, so
    # that PostgreSQL walks that index rather than the job's whole history.
    mine = sa.and_(
        b.c.job_identifier == name,
        b.c.generation == generation,
        unfinished(b),
        b.c.status == "failed",
    )
    query = (
        sa.select(b, logs.c.logging.label("error_text"))
        .select_from(b.outerjoin(logs, sa.and_(logs.c.id == b.c.id, logs.c.attempt == b.c.attempt)))
        .where(mine)
        .order_by(b.c.id.desc())
        .limit(FAILED_SHOWN)
    )
    async with store.reading(f"reading the failed batches of job {name!r}") as conn:
        total = int(await conn.scalar(sa.select(sa.func.count()).select_from(b).where(mine)) or 0)
        rows = (await conn.execute(query)).all()
    return [
        Failure(
            batch_id=int(r.id),
            state=state_of(r),
            range_start=int(r.range_start),
            range_end=int(r.range_end),
            attempt=int(r.attempt),
            max_attempts=int(r.max_attempts),
            ended=r.processing_end,
            error=r.error_text,
        )
        for r in rows
    ], total
