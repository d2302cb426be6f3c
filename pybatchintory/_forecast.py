"""Forecast: a job's backlog as a number of batches and an ETA, at the pace of its own
recent history (docs/observability.md, forecast).

The pace comes from the job's last :data:`SAMPLE` batches by range, read backwards on
the ``(job_identifier, range_start)`` index: a bounded read, whatever the history's
length. Of those, the succeeded ones give weight and items per second of busy time (the
union of their processing intervals, so that idle gaps between runs do not count) and
how many ran at once on average (their summed durations over that busy time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from ._reports import Backlog, Forecast
from ._storage import Storage
from .job import Job

__all__ = ["SAMPLE", "forecast_of", "pace"]

SAMPLE = 100  # batches read: enough for a stable mean, bounded whatever the history


async def forecast_of(
    store: Storage, job: str, backlog: Backlog | None, definition: Job | None
) -> Forecast:
    """The forecast of ``job`` for ``backlog`` (None: the pace only)."""
    b = store.tables.batches
    # No status condition: the last SAMPLE batches whatever they are, then the succeeded
    # among them, so that a run of failures at the top cannot lengthen the walk.
    recent = (
        sa.select(b.c.processing_start, b.c.processing_end, b.c.weight, b.c.item_count, b.c.status)
        .where(b.c.job_identifier == job)
        .order_by(b.c.job_identifier.desc(), b.c.range_start.desc())
        .limit(SAMPLE)
    )
    async with store.reading(f"reading the recent batches of job {job!r}") as conn:
        rows = [r[:4] for r in (await conn.execute(recent)).all() if r.status == "succeeded"]
    return pace(rows, backlog, definition, datetime.now(timezone.utc))


def pace(
    rows: Sequence[Any], backlog: Backlog | None, definition: Job | None, now: datetime
) -> Forecast:
    """The forecast from succeeded batches' ``(processing_start, processing_end, weight,
    item_count)`` (pure, no I/O)."""
    done = [r for r in rows if r[1] is not None and r[1] > r[0]]
    weight_rate = items_rate = concurrency = mean_seconds = None
    mean_weight = mean_items = None
    if done:
        busy = _busy_seconds([(r[0], r[1]) for r in done])
        total = sum((r[1] - r[0]).total_seconds() for r in done)
        weight_rate = sum(float(r[2]) for r in done) / busy
        items_rate = sum(int(r[3]) for r in done) / busy
        concurrency = total / busy
        mean_seconds = total / len(done)
        mean_weight = sum(float(r[2]) for r in done) / len(done)
        mean_items = sum(int(r[3]) for r in done) / len(done)
    batches = eta = None
    basis = "history" if done else "budget"
    if backlog is not None:
        by_weight = backlog.weight is not None
        left = float(backlog.weight) if backlog.weight is not None else float(backlog.items)
        if backlog.items == 0:
            batches, eta = 0, 0.0
        else:
            per_batch = mean_weight if by_weight else mean_items
            if per_batch:
                batches = math.ceil(left / per_batch)
            else:
                batches = _by_budget(backlog, definition)
            batches = max(1, min(batches, backlog.items))  # a batch holds one item or more
            rate = weight_rate if by_weight else items_rate
            eta = left / rate if rate else None
    return Forecast(
        sample_batches=len(done),
        weight_per_second=weight_rate,
        items_per_second=items_rate,
        concurrency=concurrency,
        mean_batch_seconds=mean_seconds,
        batches=batches,
        eta_seconds=eta,
        finishes_at=None if eta is None else now + timedelta(seconds=eta),
        basis=basis,
    )


def _by_budget(backlog: Backlog, job: Job | None) -> int:
    """Without history: the budget's bound (each batch full), one batch when unbounded."""
    counts = [1]
    if job is not None and job.weight is not None and backlog.weight is not None:
        counts.append(math.ceil(backlog.weight / job.weight))
    if job is not None and job.max_items is not None:
        counts.append(math.ceil(backlog.items / job.max_items))
    return max(counts)


def _busy_seconds(intervals: list[tuple[datetime, datetime]]) -> float:
    """The length of the union of the intervals (batches running at once count once)."""
    busy = 0.0
    end: datetime | None = None
    start: datetime | None = None
    for lo, hi in sorted(intervals):
        if end is None or start is None or lo > end:
            if end is not None and start is not None:
                busy += (end - start).total_seconds()
            start, end = lo, hi
        elif hi > end:
            end = hi
    if end is not None and start is not None:
        busy += (end - start).total_seconds()
    return busy
