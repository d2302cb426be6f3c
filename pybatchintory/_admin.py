"""An operator's commands: list a job's batches, release or expire one now, pause and
resume a job (docs/reference.md, "Administration").

Each write locks the job's row first, as acquisitions do, so it is ordered with them:
an acquisition that started before a pause hands its batch out, none after it does.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import sqlalchemy as sa

from ._engines import backend_errors, retry_transient, write_transaction
from ._reports import BatchInfo
from ._statements import current_generation, db_now
from ._storage import Storage, job_row
from .exceptions import BatchStateError, InvalidArgumentError

__all__ = ["BATCH_FILTERS", "expire_batch", "list_batches", "pause_job", "release_batch"]

logger = logging.getLogger("pybatchintory")

# What ``batches --status`` accepts: the stored statuses, and the two kinds of failed.
BATCH_FILTERS = ("running", "succeeded", "failed", "released", "retry_wait", "out_of_attempts")
_MAX_LIST = 10_000


async def list_batches(
    store: Storage, job: str, *, status: str | None = None, limit: int = 50
) -> list[BatchInfo]:
    """The job's batches of its current generation, newest first, each with the text of
    its last attempt's log row (the error of a failed one)."""
    if status is not None and status not in BATCH_FILTERS:
        raise InvalidArgumentError(
            f"status must be one of {', '.join(BATCH_FILTERS)} (or None for all), got {status!r}"
        )
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_LIST:
        raise InvalidArgumentError(f"limit must be an integer from 1 to {_MAX_LIST}, got {limit!r}")
    b, logs = store.tables.batches, store.tables.logs
    last_text = (
        sa.select(logs.c.logging)
        .where(logs.c.id == b.c.id, logs.c.attempt == b.c.attempt)
        .scalar_subquery()
    )
    query = sa.select(b, last_text.label("last_log")).where(
        b.c.job_identifier == job, b.c.generation == current_generation(store.tables, job)
    )
    if status == "retry_wait":
        query = query.where(b.c.status == "failed", b.c.attempt < b.c.max_attempts)
    elif status == "out_of_attempts":
        query = query.where(b.c.status == "failed", b.c.attempt >= b.c.max_attempts)
    elif status is not None:
        query = query.where(b.c.status == status)
    async with store.reading(f"listing the batches of job {job!r}") as conn:
        await job_row(conn, store.tables, job)  # an unknown job is a mistake, not "none"
        rows = (await conn.execute(query.order_by(b.c.id.desc()).limit(limit))).all()
    return [_info(r, r.last_log) for r in rows]


def _info(r: Any, last_log: str | None) -> BatchInfo:
    return BatchInfo(
        id=int(r.id),
        job_identifier=r.job_identifier,
        generation=int(r.generation),
        range_start=int(r.range_start),
        range_end=int(r.range_end),
        status=r.status,
        attempt=int(r.attempt),
        max_attempts=int(r.max_attempts),
        item_count=int(r.item_count),
        weight=float(r.weight),
        worker=r.worker,
        processing_start=r.processing_start,
        processing_end=r.processing_end,
        lease_expires_at=r.lease_expires_at,
        retry_after=r.retry_after,
        last_log=last_log,
    )


async def release_batch(store: Storage, job: str, batch_id: int, reason: str | None) -> BatchInfo:
    """Take a running batch from its worker and hand it back unprocessed (``released``:
    no attempt used): the next acquisition takes it again at once."""
    text = "released by an operator" + (f": {reason}" if reason else "")
    return await _take_from_worker(store, job, batch_id, "released", text)


async def expire_batch(store: Storage, job: str, batch_id: int, reason: str | None) -> BatchInfo:
    """End a running batch's lease now, as if its worker had died: the attempt counts
    as failed, and the batch is handed out again at once while attempts are left."""
    text = "lease expired by an operator" + (f": {reason}" if reason else "")
    return await _take_from_worker(store, job, batch_id, "failed", text)


async def _take_from_worker(
    store: Storage,
    job: str,
    batch_id: int,
    outcome: Literal["released", "failed"],
    text: str,
) -> BatchInfo:
    b, logs = store.tables.batches, store.tables.logs
    dialect = store.backend.dialect
    _check_id(batch_id)

    async def take() -> Any:
        async with write_transaction(store.engine) as conn:
            await job_row(conn, store.tables, job, lock=True)
            row = (await conn.execute(sa.select(b).where(b.c.id == batch_id))).first()
            if row is None or row.job_identifier != job:
                raise InvalidArgumentError(
                    f"job {job!r} has no batch {batch_id}; 'pybatchintory batches {job}' lists them"
                )
            if row.status != "running":
                raise BatchStateError(
                    f"batch {batch_id} of job {job!r} is {row.status}, not running: only a "
                    "running batch can be released or expired"
                )
            now = db_now(dialect)
            taken = (
                await conn.execute(
                    sa.update(b)
                    .where(b.c.id == batch_id, b.c.attempt == row.attempt, b.c.status == "running")
                    .values(
                        status=outcome,
                        processing_end=now,
                        lease_expires_at=None,
                        retry_after=None,  # an operator's expiry: due at once
                        max_attempts=b.c.max_attempts + (1 if outcome == "released" else 0),
                    )
                    .returning(b)
                )
            ).first()
            if taken is None:  # its worker finished it since the read (no job lock there)
                raise BatchStateError(
                    f"batch {batch_id} of job {job!r} was finished by its worker just now: "
                    "only a running batch can be released or expired"
                )
            await conn.execute(
                sa.update(logs)
                .where(logs.c.id == batch_id, logs.c.attempt == row.attempt)
                .where(logs.c.status == "running")
                .values(status=outcome, processing_end=now, logging=text)
            )
            return taken

    async with backend_errors(
        f"taking batch {batch_id} of job {job!r} from its worker", store.engine
    ):
        row = await retry_transient(take)
    info = _info(row, last_log=text)
    logger.warning(
        "batch %s of job %s (ids %s..%s, attempt %s) %s; its worker gets BatchLostError",
        batch_id,
        job,
        info.range_start,
        info.range_end,
        info.attempt,
        text,
        extra={
            "job": job,
            "batch_id": batch_id,
            "range_start": info.range_start,
            "range_end": info.range_end,
            "attempt": info.attempt,
        },
    )
    return info


async def pause_job(store: Storage, job: str, *, paused: bool, reason: str | None = None) -> bool:
    """Pause (``paused=True``) or resume the job; return whether that changed anything.
    Pausing a paused job keeps when it was paused, and its reason unless given one."""
    jobs = store.tables.jobs
    now = db_now(store.backend.dialect)

    async def change() -> bool:
        async with write_transaction(store.engine) as conn:
            row = await job_row(conn, store.tables, job, lock=True)
            was_paused = row.paused_at is not None
            values: dict[str, Any] = (
                {
                    "paused_at": row.paused_at if was_paused else now,
                    "pause_reason": row.pause_reason if reason is None else reason,
                }
                if paused
                else {"paused_at": None, "pause_reason": None}
            )
            await conn.execute(sa.update(jobs).where(jobs.c.job_identifier == job).values(**values))
            return was_paused != paused

    verb = "pausing" if paused else "resuming"
    async with backend_errors(f"{verb} job {job!r}", store.engine):
        changed = await retry_transient(change)
    logger.warning(
        "job %s %s%s",
        job,
        ("paused" if paused else "resumed")
        if changed
        else ("already paused" if paused else "was not paused"),
        f": {reason}" if reason and paused else "",
        extra={"job": job, "paused": paused},
    )
    return changed


def _check_id(batch_id: Any) -> None:
    if isinstance(batch_id, bool) or not isinstance(batch_id, int) or not 1 <= batch_id < 2**63:
        raise InvalidArgumentError(f"batch_id must be a positive 64-bit integer, got {batch_id!r}")
