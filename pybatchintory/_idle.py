"""Why a job has nothing to hand out: the reason an acquisition returned None, as
status and the acquisition's INFO log line say it (no silent None)."""

from __future__ import annotations

import sqlalchemy as sa

from ._statements import frontier
from ._storage import Storage
from .job import Job

__all__ = ["frontier_reason", "nothing_new_reason", "time_window_reason", "window_reason"]


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


def time_window_reason(job: Job) -> str:
    """No row of the source lies in the job's time window."""
    since = "-" if job.since is None else job.since.isoformat()
    until = "-" if job.until is None else job.until.isoformat()
    return (
        f"nothing in the time window: no row of {job.source_table} has {job.time_column} "
        f"in [{since}, {until})"
    )
