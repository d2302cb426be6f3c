"""Why a job has nothing to hand out: the reason an acquisition returned None, as
status and the acquisition's INFO log line say it (no silent None)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from ._statements import current_generation, frontier
from ._storage import Storage
from ._tables import unfinished
from .job import Job

__all__ = [
    "backoff_reason",
    "frontier_reason",
    "nothing_new_reason",
    "paused_reason",
    "time_window_reason",
    "window_reason",
]


def paused_reason(paused_at: datetime | None, reason: str | None) -> str | None:
    """The job is paused: acquisitions hand out nothing until it is resumed."""
    if paused_at is None:
        return None
    why = f" ({reason})" if reason else ""
    return (
        f"job paused since {paused_at.isoformat(sep=' ', timespec='seconds')}{why}; "
        "'pybatchintory resume JOB' lets acquisitions hand out batches again"
    )


def window_reason(cursor: int | None, id_start: int | None, id_end: int | None) -> str | None:
    """The window is behind the cursor: the job has taken every id of it."""
    if id_end is None or cursor is None or cursor < id_end:
        return None
    window = f"{id_start if id_start is not None else '-'}..{id_end}"
    return (
        f"window done: the job's cursor ({cursor}) is at or past id_end of the window "
        f"{window}; to process those ids again, reset the job (pybatchintory reset) or use "
        "another job name"
    )


async def frontier_reason(store: Storage, upstream: str) -> str | None:
    """The upstream's oldest unfinished batch holds the downstream back."""
    b = store.tables.batches
    async with store.reading(f"reading the frontier of job {upstream!r}") as conn:
        row = (
            await conn.execute(
                sa.select(b.c.id, b.c.status, b.c.range_start, b.c.range_end).where(
                    b.c.id == frontier(store.tables, upstream)
                )
            )
        ).first()
    if row is None:
        return None
    return (
        f"upstream frontier: batch {row.id} of job {upstream!r} (ids {row.range_start}.."
        f"{row.range_end}) is {row.status}; the downstream waits for it to succeed"
    )


def nothing_new_reason(cursor: int | None, upper: int | None) -> str:
    after = "yet" if cursor is None else f"after id {cursor}"
    bound = "" if upper is None else f" up to id {upper}"
    return f"nothing new: no matching item {after}{bound}"


async def backoff_reason(store: Storage, job: str) -> str | None:
    """A failed batch of the job waits out its retry backoff (an index step on the
    job's unfinished batches)."""
    b = store.tables.batches
    query = (
        sa.select(b.c.id, b.c.retry_after)
        .where(
            b.c.job_identifier == job,
            unfinished(b),
            b.c.generation == current_generation(store.tables, job),
            b.c.status == "failed",
            b.c.attempt < b.c.max_attempts,
            b.c.retry_after.is_not(None),
        )
        .order_by(b.c.retry_after)
        .limit(1)
    )
    async with store.reading(f"reading the retry backoff of job {job!r}") as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        return None
    return (
        f"failed batch {row.id} waits for its retry until "
        f"{row.retry_after.isoformat(sep=' ', timespec='seconds')} (backoff)"
    )


def time_window_reason(job: Job) -> str:
    """No row of the source lies in the job's time window."""
    since = "-" if job.since is None else job.since.isoformat()
    until = "-" if job.until is None else job.until.isoformat()
    return (
        f"nothing in the time window: no row of {job.source_table} has {job.time_column} "
        f"in [{since}, {until})"
    )
