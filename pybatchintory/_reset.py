"""Reset: rewind a job's cursor into a new generation, keeping its history."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from ._engines import backend_errors, retry_transient, write_transaction
from ._reports import ResetResult
from ._statements import db_now
from ._storage import Storage, job_row
from ._tables import recount_batches, unfinished
from .exceptions import BatchStateError, InvalidArgumentError

logger = logging.getLogger("pybatchintory")


# -- reset -----------------------------------------------------------------------------


async def reset_job(
    store: Storage, job: str, to_id: int | None, *, force: bool = False, dry_run: bool = False
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

    Succeeded batches wholly at or below ``to_id`` are carried too (``kept``): their ids
    stand, and status and coverage go on counting them. A reset to where the cursor
    already is changes nothing (``changed`` False). ``dry_run`` says what a reset would
    do, checks included, and writes nothing.
    """
    if to_id is not None and (isinstance(to_id, bool) or not isinstance(to_id, int)):
        raise InvalidArgumentError(f"to_id must be an integer id or None, got {to_id!r}")
    backend = store.backend
    b, jobs, logs = backend.tables.batches, backend.tables.jobs, backend.tables.logs

    touched: list[tuple[str, Any]] = []

    async def rewind() -> ResetResult:
        touched.clear()
        async with write_transaction(backend.engine) as conn:
            row = await job_row(conn, store.tables, job, lock=True)
            if to_id is not None and (row.cursor is None or to_id > row.cursor):
                raise InvalidArgumentError(
                    f"to_id {to_id} is beyond the cursor of job {job!r} ({row.cursor}): a reset "
                    "only rewinds; use id_start to skip ids instead"
                )
            open_batches = (
                await conn.execute(
                    sa.select(b.c.id, b.c.range_start, b.c.range_end, b.c.status, b.c.attempt)
                    .where(
                        b.c.job_identifier == job, unfinished(b), b.c.generation == row.generation
                    )
                    .order_by(b.c.id)
                )
            ).all()
            carried = [r for r in open_batches if to_id is not None and r.range_end <= to_id]
            straddling = [
                r
                for r in open_batches
                if to_id is not None and r.range_start <= to_id < r.range_end
            ]
            superseded = [r for r in open_batches if r not in carried and r not in straddling]
            if straddling:
                s = straddling[0]
                raise InvalidArgumentError(
                    f"to_id {to_id} falls inside unfinished batch {s.id} (ids {s.range_start}.."
                    f"{s.range_end}) of job {job!r}; reset to {s.range_start - 1} or {s.range_end}"
                )
            if to_id == row.cursor and not superseded:
                return ResetResult(
                    job, row.cursor, to_id, row.generation, (), (), 0, False, dry_run
                )
            running = [r.id for r in superseded if r.status == "running"]
            if running and not force:
                shown = ", ".join(str(i) for i in running[:5]) + (
                    ", ..." if len(running) > 5 else ""
                )
                raise BatchStateError(
                    f"job {job!r} has {len(running)} running batch(es) ({shown}) after the reset "
                    "point; wait for them, or force the reset (their workers then lose them)"
                )
            generation = row.generation + 1
            kept_below = sa.and_(
                b.c.job_identifier == job,
                b.c.generation == row.generation,
                b.c.status == "succeeded",
                b.c.range_end <= to_id if to_id is not None else sa.false(),
            )
            if dry_run:
                kept = await conn.scalar(sa.select(sa.func.count()).where(kept_below))
                return ResetResult(
                    job,
                    row.cursor,
                    to_id,
                    generation,
                    tuple(r.id for r in carried),
                    tuple(r.id for r in superseded),
                    int(kept or 0),
                    True,
                    True,
                )
            now = db_now(backend.dialect)
            # One UPDATE over the job's batches up to to_id (the job_range index).
            kept = (
                await conn.execute(sa.update(b).where(kept_below).values(generation=generation))
            ).rowcount
            if carried:
                await conn.execute(
                    sa.update(b)
                    .where(b.c.id.in_([r.id for r in carried]))
                    .values(generation=generation)
                )
            for r in superseded:
                if r.status == "running":
                    await conn.execute(
                        sa.update(logs)
                        .where(
                            logs.c.id == r.id,
                            logs.c.attempt == r.attempt,
                            logs.c.status == "running",
                        )
                        .values(
                            status="failed",
                            processing_end=now,
                            logging=f"superseded by a reset of the job to generation {generation}",
                        )
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
            # The new generation's counters from its rows (kept and carried batches):
            # one aggregate over the job's batches, as the kept UPDATE above already is.
            await conn.execute(recount_batches(store.tables, job))
            touched.extend([("carried into the new generation", r) for r in carried])
            touched.extend([("superseded by the reset", r) for r in superseded])
        return ResetResult(
            job_identifier=job,
            old_cursor=row.cursor,
            new_cursor=to_id,
            generation=generation,
            carried=tuple(r.id for r in carried),
            superseded=tuple(r.id for r in superseded),
            kept=kept,
            changed=True,
            dry_run=False,
        )

    async with backend_errors(f"resetting job {job!r}", backend.engine):
        result = await retry_transient(rewind)
    if result.dry_run or not result.changed:
        return result
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
