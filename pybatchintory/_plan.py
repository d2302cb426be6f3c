"""Plan (dry run): the batches the next acquisitions would hand out, taking nothing.

Acquisitions hand out reclaimable batches first (failed with attempts left, running
with an expired lease: same range, next attempt, oldest id first), then new ranges
planned from the cursor with the job's budget. The plan follows the same order with
reads only: no job lock, no row written, so it can run beside live workers (whose
acquisitions may of course take these batches first).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ._engines import backend_errors
from ._reports import PlannedBatch
from ._source import SourceBinding
from ._statements import db_now, due_again, lease_expired
from ._storage import Storage
from ._tables import unfinished
from .exceptions import InvalidArgumentError, JobSourceMismatchError
from .job import Job, positive_int

__all__ = ["plan_batches"]

_LOWEST, _HIGHEST = -(2**63), 2**63 - 1


async def plan_batches(store: Storage, job: Job | str, count: int) -> list[PlannedBatch]:
    """The next ``count`` batches of ``job`` (see :class:`PlannedBatch`)."""
    wanted = positive_int(count, "next")
    assert wanted is not None
    definition, row, kind = await store.job_of(job)
    if kind == "expression" and not isinstance(job, Job):
        raise InvalidArgumentError(
            f"job {job!r}'s filter is a SQL expression, stored as text only: pass the Job "
            "to plan its batches"
        )
    planned = await _reclaimable(store, definition, row, wanted) if row is not None else []
    if len(planned) >= wanted:
        return planned
    source = await store.source(definition)
    if row is not None:
        bound = SourceBinding(row.source_kind, row.source, row.id_column, row.filter_text)
        if bound != source.binding:
            # What the acquisition's job lock would refuse: say so rather than plan.
            raise JobSourceMismatchError(
                f"job {definition.job_identifier!r} is bound to {bound.describe()}, not to "
                f"{source.binding.describe()}; use another job identifier for another source"
            )
    cursor = None if row is None else row.cursor
    if cursor is not None and cursor >= _HIGHEST:
        return planned  # the cursor is at the highest 64-bit id: no id after it
    lower, upper = definition.id_start, definition.id_end
    if source.time_window is not None:
        # the bounds an acquisition reads when it starts (inventory._run_window)
        async with backend_errors("reading the ids of the time window", source.engine):
            ids = await source.time_window_ids()
        if ids is None:
            return planned
        lower = ids[0] if lower is None else max(lower, ids[0])
        upper = ids[1] if upper is None else min(upper, ids[1])
    starts = [v for v in (lower, None if cursor is None else cursor + 1) if v is not None]
    start = max(starts, default=_LOWEST)
    while len(planned) < wanted and (upper is None or start <= upper):
        plan = await source.plan(start, upper, definition.weight, definition.max_items)
        if plan is None:
            break
        planned.append(
            PlannedBatch(
                "new", None, plan.range_start, plan.range_end, plan.item_count, plan.weight, 1
            )
        )
        if plan.range_end >= _HIGHEST:
            break
        start = plan.range_end + 1
    return planned


async def _reclaimable(store: Storage, job: Job, row: Any, count: int) -> list[PlannedBatch]:
    """What reclaim would hand out, in its order (the reclaim candidate's predicate).

    A running batch out of attempts whose lease expired is not handed out: reclaim marks
    it failed and looks further."""
    b = store.tables.batches
    now = db_now(store.backend.dialect)
    expired = sa.and_(lease_expired(b, now), b.c.attempt < b.c.max_attempts)
    retryable = due_again(b, now)
    query = (
        sa.select(
            b.c.id,
            b.c.status,
            b.c.range_start,
            b.c.range_end,
            b.c.item_count,
            b.c.weight,
            b.c.attempt,
        )
        .where(
            b.c.job_identifier == job.job_identifier,
            b.c.generation == row.generation,
            unfinished(b),
            sa.or_(expired, retryable),
        )
        .order_by(b.c.id)
        .limit(count)
    )
    if job.window != (None, None):
        lo = _LOWEST if job.id_start is None else job.id_start
        hi = _HIGHEST if job.id_end is None else job.id_end
        query = query.where(b.c.range_start >= lo, b.c.range_end <= hi)
    async with store.reading(f"planning the batches of job {job.job_identifier!r}") as conn:
        rows = (await conn.execute(query)).all()
    return [
        PlannedBatch(
            {"running": "expired", "released": "released"}.get(r.status, "retry"),
            int(r.id),
            int(r.range_start),
            int(r.range_end),
            int(r.item_count),
            float(r.weight),
            int(r.attempt) + 1,
        )
        for r in rows
    ]
