"""Our tables' SQL: job locking, reclaiming, recording batches, fenced finishing."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._dialects import dialect_named
from ._engines import (
    HotConnection,
    WriteGate,
    backend_errors,
    hot_connection,
    safe_write,
    urgent_signal,
    write_transaction,
)
from ._migrations import ensure_current
from ._source import BatchPlan, SourceBinding
from ._statements import build_statements, current_generation, lease_params
from ._tables import BackendTables
from .exceptions import (
    BatchLostError,
    InvalidArgumentError,
    InventoryNotOpenError,
    JobSourceMismatchError,
)

__all__ = ["Backend", "BatchRecord", "JobState", "Outcome"]

Outcome = Literal["succeeded", "failed", "released"]

logger = logging.getLogger("pybatchintory")

HIGHEST_ID = 2**63 - 1  # ids are 64-bit signed integers end to end
LEASE_EXPIRED = "lease expired: the worker stopped renewing it (crashed, killed or hung)"


class _Candidate(NamedTuple):
    id: int
    attempt: int
    max_attempts: int
    status: str


@dataclass(frozen=True)
class JobState:
    """The locked job row's cursor and generation."""

    cursor: int | None
    generation: int
    paused_at: datetime | None = None
    pause_reason: str | None = None
    # PostgreSQL looks for the first reclaimable batch together with the lock:
    # ``looked`` then, and ``candidate`` what it found (id, attempt, max_attempts, status)
    looked: bool = False
    candidate: _Candidate | None = None

    @property
    def exhausted(self) -> bool:
        """The cursor is at the highest 64-bit id: no new range can follow it."""
        return self.cursor is not None and self.cursor >= HIGHEST_ID

    @property
    def next_id(self) -> int | None:
        """The first id after the cursor (None before the first batch, or when
        :attr:`exhausted`: there is no such 64-bit id)."""
        if self.cursor is None or self.exhausted:
            return None
        return self.cursor + 1


@dataclass(frozen=True)
class BatchRecord:
    """A batch row as handed to a worker."""

    id: int
    job_identifier: str
    range_start: int
    range_end: int
    weight: float
    item_count: int
    attempt: int
    max_attempts: int
    lease_expires_at: datetime


class Backend:
    """The backend tables on the inventory engine."""

    def __init__(self, engine: AsyncEngine, tables: BackendTables) -> None:
        self.engine = engine
        self.tables = tables
        self.dialect = engine.dialect.name
        self.sql = build_statements(tables, self.dialect, dialect_named(self.dialect).insert)
        self.closed = False  # set by Inventory.close()
        # SQLite: this process's writes one at a time, renewals and finishes first.
        self.signal = urgent_signal(engine)
        self.gate = WriteGate(self.signal) if self.dialect == "sqlite" else None

    def _check_open(self, batch_id: int) -> None:
        if self.closed:
            raise InventoryNotOpenError(
                f"batch {batch_id} belongs to an inventory that was closed: it can no "
                "longer be finished; its lease runs out and it is handed out again"
            )

    # -- creation -------------------------------------------------------------------

    async def create_tables(self, *, create: bool = True) -> None:
        """Create the tables, or upgrade them to this library's schema version, or (the
        usual case, one read) find them current; safe when many processes do it at
        once. ``create=False``: only check that they are current, issuing no DDL. See
        :mod:`pybatchintory._migrations`."""
        await ensure_current(self.engine, self.tables, create=create)

    # -- acquisition (inside the caller's write transaction) -----------------------

    async def take(
        self, transaction: Callable[[], Awaitable[BatchRecord | None]]
    ) -> BatchRecord | None:
        """Run an acquisition's ``transaction`` on the one cancellation-safe write path
        (:func:`safe_write`): if the caller is cancelled, the transaction still ends, and
        a batch it took is handed back without using up an attempt, before the
        cancellation goes on. Conflicts run the transaction again."""
        return await safe_write(transaction, undo=self._hand_back_unreached, gate=self.gate)

    async def _hand_back_unreached(self, record: BatchRecord | None) -> None:
        if record is None:
            return
        await self.finish(
            record.id,
            record.attempt,
            outcome="released",
            text="the acquisition was cancelled before the batch reached its worker",
        )

    async def lock_job(
        self,
        conn: HotConnection,
        job_identifier: str,
        binding: SourceBinding,
        definition: str,
        window: tuple[int | None, int | None] = (None, None),
    ) -> JobState:
        """Insert the job's row if absent and lock it, in one statement; check that the
        job is bound to ``binding``; store ``definition`` when it changed (a budget or
        lease given per call is the newest definition). On SQLite the transaction holds
        the write lock. On PostgreSQL the same statement looks for the first batch to
        reclaim in ``window`` (see :meth:`reclaim`)."""
        params: dict[str, Any] = {
            "p_job": job_identifier,
            "p_kind": binding.kind,
            "p_source": binding.name,
            "p_id_column": binding.id_column,
            "p_filter_text": binding.filter_text,
            "p_definition": definition,
        }
        statement = self.sql.lock_job
        if self.sql.lock_and_look is not None:
            statement = self.sql.lock_and_look[window != (None, None)]
            params.update(p_id_start=window[0], p_id_end=window[1])
        row = (await conn.execute(statement, params)).one()
        bound = SourceBinding(row.source_kind, row.source, row.id_column, row.filter_text)
        if not binding.accepts(bound):
            raise JobSourceMismatchError(
                f"job {job_identifier!r} is bound to {bound.describe()}, not to "
                f"{binding.describe()}; use another job identifier for another source"
            )
        if row.definition != definition:
            await conn.execute(self.sql.store_definition, params)
        looked = self.sql.lock_and_look is not None
        candidate = None
        if looked and row.candidate_id is not None:
            candidate = _Candidate(
                row.candidate_id,
                row.candidate_attempt,
                row.candidate_max_attempts,
                row.candidate_status,
            )
        return JobState(
            row.cursor, row.generation, row.paused_at, row.pause_reason, looked, candidate
        )

    async def reclaim(
        self,
        conn: HotConnection,
        job_identifier: str,
        job: JobState,
        window: tuple[int | None, int | None],
        lease_seconds: float,
        worker: str,
    ) -> BatchRecord | None:
        """Hand out again the job's oldest failed batch with attempts left, or running
        batch whose lease expired: same range, ``attempt + 1``, a new log row."""
        lookup: dict[str, Any] = {"p_job": job_identifier, "p_generation": job.generation}
        candidate = self.sql.reclaim_candidate
        if window != (None, None):
            candidate = self.sql.reclaim_candidate_in_window
            lookup.update(p_id_start=window[0], p_id_end=window[1])

        async def look() -> Any:
            return (await conn.execute(candidate, lookup)).first()

        # On PostgreSQL the job's lock statement made the first lookup (JobState.looked).
        found: Any = job.candidate if job.looked else await look()
        while found is not None:
            seen = {"p_batch_id": found.id, "p_attempt": found.attempt}
            was_running = found.status == "running"
            if was_running and found.attempt >= found.max_attempts:
                await self._expire_exhausted(conn, seen)
                found = await look()
                continue
            take = self.sql.take_expired if was_running else self.sql.take_failed
            params = {**seen, "p_worker": worker, **lease_params(self.dialect, lease_seconds)}
            taken = (await conn.execute(take, params)).first()
            if taken is None:  # finished, renewed or taken since the lookup: look again
                found = await look()
                continue
            if was_running:
                await self._close_log(conn, found.id, found.attempt, "failed", LEASE_EXPIRED)
            await conn.execute(
                self.sql.open_log,
                {"p_batch_id": taken.id, "p_attempt": taken.attempt, "p_worker": worker},
            )
            return BatchRecord(**taken._mapping)
        return None

    async def _expire_exhausted(self, conn: HotConnection, seen: dict[str, int]) -> None:
        if (await conn.execute(self.sql.expire_exhausted, seen)).rowcount != 1:
            return
        batch_id, attempt = seen["p_batch_id"], seen["p_attempt"]
        await self._close_log(conn, batch_id, attempt, "failed", LEASE_EXPIRED)
        logger.warning(
            "batch %s used its last attempt (%s) and its lease expired; it stays failed",
            batch_id,
            attempt,
            extra={"batch_id": batch_id, "attempt": attempt},
        )

    async def insert_batch(
        self,
        conn: HotConnection,
        job_identifier: str,
        job: JobState,
        plan: BatchPlan,
        *,
        max_attempts: int,
        lease_seconds: float,
        worker: str,
    ) -> BatchRecord:
        """Record a new batch, its first log row and the job's new cursor together."""
        params = {
            "p_job": job_identifier,
            "p_generation": job.generation,
            "p_range_start": plan.range_start,
            "p_range_end": plan.range_end,
            "p_weight": plan.weight,
            "p_item_count": plan.item_count,
            "p_max_attempts": max_attempts,
            "p_worker": worker,
            **lease_params(self.dialect, lease_seconds),
        }
        row = (await conn.execute(self.sql.record_batch, params)).one()
        if not self.sql.combined:
            log = {"p_batch_id": row.id, "p_attempt": 1, "p_worker": worker}
            await conn.execute(self.sql.open_log, log)
            await conn.execute(self.sql.move_cursor, params)
        return BatchRecord(**row._mapping)

    async def _close_log(
        self, conn: HotConnection, batch_id: int, attempt: int, status: str, text: str | None
    ) -> None:
        await conn.execute(
            self.sql.close_log,
            {"p_batch_id": batch_id, "p_attempt": attempt, "p_status": status, "p_text": text},
        )

    # -- a worker's own batch (no job lock: fenced on id, attempt and status) --------

    async def finish(
        self,
        batch_id: int,
        attempt: int,
        *,
        outcome: Outcome,
        result: dict[str, Any] | None = None,
        text: str | None = None,
        retry_delay: float = 0.0,
    ) -> int:
        """Record the outcome of one attempt; return the batch's max_attempts.

        ``released`` hands the batch back without counting the attempt against it (its
        worker never processed it); ``failed`` makes it wait ``retry_delay`` seconds
        before it is handed out again. Raises BatchLostError, writing nothing, when the
        attempt is no longer running.
        """
        self._check_open(batch_id)
        status = outcome
        params = {
            "p_batch_id": batch_id,
            "p_attempt": attempt,
            "p_status": status,
            "p_result": result,
            "p_refund": 1 if outcome == "released" else 0,
            "p_backoff": outcome == "failed",
            "p_text": text,
            **lease_params(self.dialect, retry_delay),
        }

        async def attempt_finish() -> int:
            async with self._single_write() as conn:
                row = (await conn.execute(self.sql.finish, params)).first()
                if row is None:
                    raise _lost(batch_id, attempt)
                if not self.sql.combined:
                    await conn.execute(self.sql.close_log, params)
                return int(row.max_attempts)

        async with backend_errors(f"recording batch {batch_id} as {status}", self.engine):
            return await safe_write(attempt_finish, gate=self.gate, urgent=True)

    async def heartbeat(self, batch_id: int, attempt: int, lease_seconds: float) -> datetime:
        """Extend the lease of a running attempt; return the new expiry."""
        self._check_open(batch_id)
        params = {
            "p_batch_id": batch_id,
            "p_attempt": attempt,
            **lease_params(self.dialect, lease_seconds),
        }

        async def attempt_renew() -> datetime:
            async with self._single_write() as conn:
                expires = await conn.scalar(self.sql.heartbeat, params)
                if expires is None:
                    raise _lost(batch_id, attempt)
                return expires  # type: ignore[no-any-return]

        async with backend_errors(f"renewing the lease of batch {batch_id}", self.engine):
            return await safe_write(attempt_renew, gate=self.gate, urgent=True)

    def _single_write(self) -> AbstractAsyncContextManager[HotConnection]:
        """Where one statement does the whole write (PostgreSQL), it is atomic by itself:
        autocommit saves the BEGIN and COMMIT round trips."""
        if self.sql.combined:
            return hot_connection(self.engine)
        return write_transaction(self.engine)

    async def requeue(self, job_identifier: str, batch_id: int | None) -> list[int]:
        """Give failed batches that used up their attempts one more; return their ids.

        Raises InvalidArgumentError for an unknown job, for a ``batch_id`` that is not
        the job's, and for one that is not out of attempts (saying what it is instead).
        """
        b, jobs = self.tables.batches, self.tables.jobs
        exhausted = sa.and_(
            b.c.job_identifier == job_identifier,
            # Only the current generation: batches superseded by a reset are history.
            b.c.generation == current_generation(self.tables, job_identifier),
            b.c.status == "failed",
            b.c.attempt >= b.c.max_attempts,
        )
        if batch_id is not None:
            exhausted = sa.and_(exhausted, b.c.id == batch_id)

        async def requeue_all() -> list[int]:
            async with write_transaction(self.engine) as conn:
                known = await conn.scalar(
                    sa.select(jobs.c.generation).where(jobs.c.job_identifier == job_identifier)
                )
                if known is None:
                    raise InvalidArgumentError(
                        f"no job {job_identifier!r} in the inventory; 'pybatchintory jobs' "
                        "lists the known jobs"
                    )
                result = await conn.execute(
                    sa.update(b)
                    .where(exhausted)
                    # an operator's retry is due now, whatever backoff the failure had
                    .values(max_attempts=b.c.attempt + 1, retry_after=None)
                    .returning(b.c.id)
                )
                ids = sorted(int(i) for i in result.scalars())
                if batch_id is not None and not ids:
                    await self._explain_not_requeued(conn, job_identifier, batch_id, known)
                return ids

        async with backend_errors(
            f"re-queueing failed batches of job {job_identifier!r}", self.engine
        ):
            return await safe_write(requeue_all, gate=self.gate)

    async def _explain_not_requeued(
        self, conn: AsyncConnection, job_identifier: str, batch_id: int, generation: int
    ) -> None:
        b = self.tables.batches
        row = (
            await conn.execute(
                sa.select(
                    b.c.job_identifier, b.c.generation, b.c.status, b.c.attempt, b.c.max_attempts
                ).where(b.c.id == batch_id)
            )
        ).first()
        if row is None or row.job_identifier != job_identifier:
            raise InvalidArgumentError(
                f"job {job_identifier!r} has no batch {batch_id}; 'pybatchintory status "
                f"{job_identifier}' and 'pybatchintory trace' show its batches"
            )
        if row.generation != generation:
            why = "it belongs to an earlier generation (a reset superseded it)"
        elif row.status != "failed":
            why = f"it is {row.status}"
        else:
            why = (
                f"it still has attempts left (attempt {row.attempt} of {row.max_attempts}): "
                "the next acquisition hands it out again by itself"
            )
        raise InvalidArgumentError(
            f"batch {batch_id} of job {job_identifier!r} was not re-queued: {why}; retry is "
            "for failed batches that used up their attempts"
        )


def _lost(batch_id: int, attempt: int) -> BatchLostError:
    return BatchLostError(
        f"batch {batch_id} attempt {attempt} is no longer running under this worker: its "
        "lease expired and it was handed out again, or it was already finished. Nothing "
        "was recorded; renew the lease more often or acquire with a longer lease_seconds"
    )
